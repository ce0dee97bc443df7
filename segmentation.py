"""Flower / background segmentation on Oxford17 by fine-tuning DeepLabV3's last layer (homework part 2).

A COCO-pretrained torchvision DeepLabV3 is frozen; only `classifier[4]`, replaced by a new 1x1 conv with two
outputs, trains, with cross-entropy or the soft IoU loss, scored by mIoU.

    python segmentation.py --loss ce               # or --loss iou; --help for every flag
    python segmentation.py --predict flower.jpg    # masks for your own images (inference/segment.py)
    python segmentation.py --export onnx           # export a trained network (inference/export.py)

This file: the config (every default, once), the LightningModule, `prepare()` and the entry point.
"""
import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric, Metric

from data.batching import TensorBatches
from data.features import FeatureStore, TensorDataModule, default_store_dir, feature_identity, trunk_features
from data.oxford17 import IGNORE_INDEX, SPLIT_NAMES, UNLABELLED_CHOICES, Oxford17, normalise
from errors import UsageError, UserError
from losses.registry import LOSSES, make_loss
from models.deeplabv3 import BACKBONES, WEIGHTS, build_deeplabv3
from reporting import segmentation as results
from training.callbacks import CustomScalars
from training.config import RunConfig, entry_point, option, parse, positive_float, positive_int, settings
from training.runs import check_resume_path, run_settings
from training.trainer import Prepared, run_task

TASK = "segmentation"
MIN_IMAGE_SIZE = 32  # below this the backbone's feature map is smaller than the ASPP's kernels
COMMANDS = {"--predict": "inference.segment:main", "--export": "inference.export:segmentation_main"}


def image_size(text):
    size = positive_int(text)
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"{size} is too small for DeepLabV3; use at least {MIN_IMAGE_SIZE}")
    return size


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class SegmentationConfig(RunConfig):
    loss: str | None = option(None, "ce: cross-entropy; iou: the soft IoU loss", choices=tuple(LOSSES), group="model",
                              shown="none, give one")
    backbone: str = option("resnet101", "DeepLabV3 backbone", choices=tuple(BACKBONES), group="model")
    weights: str = option("coco", "coco: torchvision's COCO-trained weights (downloaded once to the torch hub "
                          "cache); none: a random frozen trunk (tests)", choices=WEIGHTS, group="model")
    split: int = option(1, "which of the three official splits", check=int, choices=(1, 2, 3), group="data")
    image_size: int = option(224, "images and masks are resized to this square size", check=image_size, group="data")
    unlabelled: str = option("ignore", "the trimaps' black band at flower edges: left out of loss and metric, or "
                             "counted as background", choices=UNLABELLED_CHOICES, group="data")
    augment: bool = option(False, "random horizontal flips of training images (turns the feature cache off)",
                           group="data")
    epochs: int = option(10, "number of training epochs", flags=("--nepochs",), check=positive_int)
    batch_size: int = option(16, "images per batch (per device)", flags=("--batch_size",), check=positive_int)
    lr: float = option(1e-3, "learning rate", flags=("--learn-rate", "--learn_rate"), check=positive_float)
    data_dir: str = option("datasets/oxford17", "folder with jpg/, trimaps/, datasplits.mat or their archives "
                           "(downloaded here when missing)", group="data", setting=False)
    feature_cache: bool = option(True, "train on the frozen trunk's features, computed once; with "
                                 "--no-feature-cache the whole network runs every step", group="speed", setting=False)
    feature_store: str | None = option(None, "folder of the persistent store of trunk features, reused by every "
                                       "later run with the same trunk and images", metavar="DIR", group="speed",
                                       setting=False, shown="$XDG_CACHE_HOME/image2image/features")
    # None: what config.json files written before this flag set the trunk's layout hold (it was channels-last then)
    channels_last: bool | None = option(True, "keep the frozen trunk channels-last (faster on CPU: "
                                        "benchmarks/trunk_layout.py); NCHW with --no-channels-last", group="speed",
                                        setting=False)


# ----------------------------------------------------------------------------- model

class ConfusionIoU(Metric):
    """IoU per class over a whole split from one 2x2 confusion matrix C (summed across processes under DDP):
    IoU_c = C[c, c] / (row c + column c - C[c, c]); "miou" averages the classes that occur in the targets
    or predictions, as torchmetrics' MulticlassJaccardIndex does. One bincount of target * 2 + pred per
    batch; ignored pixels (255 * 2 + p) fall beyond the 4 counted bins."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("confusion", default=torch.zeros(2, 2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds, target):
        codes = target.reshape(-1).long() * 2 + preds.reshape(-1).long()
        self.confusion += torch.bincount(codes, minlength=2 * IGNORE_INDEX + 2)[:4].view(2, 2)

    def compute(self):
        """{"miou": macro mean, "iou": (2,) per class, 0 for a class absent from targets and predictions}."""
        c = self.confusion.double()
        union = c.sum(0) + c.sum(1) - c.diag()
        iou = torch.where(union > 0, c.diag() / union.clamp(min=1), torch.zeros_like(union))
        return {"miou": iou[union > 0].mean().float(), "iou": iou.float()}


class SegmentationModule(pl.LightningModule):
    """Frozen DeepLabV3 with a new last layer + CE or soft IoU loss + mIoU over the whole split.

    inputs: what the batches hold, decided once by `prepare`: "images" (the whole network runs) or "features"
    (the frozen trunk's output, data/features.py: only the new layer runs). Checkpoints hold the new layer and
    the trunk's identity; loading rebuilds the trunk and refuses, in one line, one whose identity differs."""

    def __init__(self, loss="ce", backbone="resnet101", weights="coco", lr=1e-3, image_size=224, inputs="images",
                 channels_last=True):
        super().__init__()
        self.save_hyperparameters(ignore=["inputs", "channels_last"])  # neither changes a number
        self.inputs = inputs
        self.model = build_deeplabv3(backbone, weights=weights, num_classes=2, channels_last=channels_last)
        self.criterion = make_loss(loss, ignore_index=IGNORE_INDEX)
        self.iou = torch.nn.ModuleDict({s: ConfusionIoU() for s in ("val", "test")})
        # exact epoch means over what each loss averages: valid pixels (CE) or images (soft IoU)
        self.losses = torch.nn.ModuleDict({s: MeanMetric() for s in ("train_loss", "val_loss", "test_loss")})

    def forward(self, images):
        return self.model(images)

    def logits(self, x, size):
        return self.model.head(x, size) if self.inputs == "features" else self.model(x)

    def _loss(self, batch, stage, batch_idx):
        x, mask = batch[0], batch[1].long()
        logits = self.logits(x, mask.shape[-2:])
        loss = self.criterion(logits, mask)
        mean = self.losses[f"{stage}_loss"]
        mean.update(loss.detach(), self.criterion.count(mask))
        if batch_idx == 0:  # a Metric logged once is computed (and synced) over the whole epoch
            self.log(f"{stage}/loss", mean, on_step=False, on_epoch=True, prog_bar=stage == "train")
        return loss, logits, mask

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train", batch_idx)[0]

    def _evaluate(self, batch, stage, batch_idx):
        _, logits, mask = self._loss(batch, stage, batch_idx)
        self.iou[stage].update(logits.max(dim=1).indices, mask)  # max: = argmax(dim=1), about 20x faster on CPU

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", batch_idx)

    def _log_iou(self, stage):
        scores = self.iou[stage].compute()  # the whole split's confusion, summed over processes
        self.log(f"{stage}/miou", scores["miou"], prog_bar=True)
        self.log(f"{stage}/iou_flower", scores["iou"][1])
        self.iou[stage].reset()

    def on_validation_epoch_end(self):
        self._log_iou("val")

    def on_test_epoch_end(self):
        self._log_iou("test")

    @torch.no_grad()
    def predict_masks(self, images):
        """0/1 mask per pixel for normalised images."""
        return self(images).max(dim=1).indices

    def on_save_checkpoint(self, checkpoint):
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["trunk"] = self.model.trunk_identity()

    def on_load_checkpoint(self, checkpoint):
        trunk, here = checkpoint.get("trunk"), self.model.trunk_identity()
        if trunk is None and checkpoint["state_dict"].keys() >= self.state_dict().keys():
            return  # an older checkpoint that holds the whole network
        if trunk != here:
            raise UserError(f"the checkpoint's frozen trunk is not the one built here (checkpoint: "
                            f"{results.describe_trunk(trunk)}; here: {results.describe_trunk(here)}); "
                            f"use the weights it was trained with")
        checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.trainable_parameters(), lr=self.hparams.lr)


# ----------------------------------------------------------------------------- prepare, train

def prepare(config):
    """The DataModule (data found, split), the module (frozen DeepLabV3 + new last layer), the trunk's
    features when they are cached, and the settings; the data is checked before the weights are read."""
    if config.loss is None:
        raise UsageError(f"choose a loss: --loss {' or --loss '.join(LOSSES)}")
    check_resume_path(config.resume)
    pl.seed_everything(config.seed, workers=True)
    transform = BACKBONES[config.backbone][1].transforms()  # the weights' normalisation; nothing is downloaded
    data = Oxford17(data_dir=config.data_dir, split=config.split, image_size=config.image_size,
                    batch_size=config.batch_size, num_workers=config.num_workers, unlabelled=config.unlabelled,
                    seed=config.seed, augment=config.augment, mean=transform.mean, std=transform.std)
    data.prepare_data()  # fail early, before any run folder is made, if the data is missing
    data.setup("fit")
    cached = config.feature_cache and not config.augment  # flipped images have other features
    module = SegmentationModule(loss=config.loss, backbone=config.backbone, weights=config.weights, lr=config.lr,
                                image_size=config.image_size, inputs="features" if cached else "images",
                                channels_last=config.channels_last is not False)
    datamodule = data
    if cached:
        images = {s: data.images(s) for s in SPLIT_NAMES}
        precision = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(config.precision)
        # the trunk runs over the images on this process's GPU when the run uses one
        gpu = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if gpu else torch.device("cpu")
        features, info = trunk_features(
            module.model.to(device).features, images, functools.partial(normalise, mean=data.mean, std=data.std),
            feature_identity(module.model.trunk_identity(), images, config.precision),
            module.model.feature_shape(config.image_size), device,
            FeatureStore(config.feature_store or default_store_dir()),
            autocast=functools.partial(torch.autocast, device.type, precision) if precision else contextlib.nullcontext)
        module.model.cpu()
        datamodule = TensorDataModule({s: TensorBatches(features[s], data.split_masks(s)) for s in SPLIT_NAMES},
                                      config.batch_size, config.seed, info)
    return Prepared(module, datamodule, run_settings(TASK, settings(config), data.settings()), data)


def train(config, prepared=None):
    """Fine-tune as `config` says, evaluate the best checkpoint on the test split; returns the summary."""
    prepared = prepared or prepare(config)
    module, data, served = prepared.module, prepared.data, prepared.datamodule
    callbacks = [results.validation_grid(data, served), CustomScalars(results.LAYOUT)]
    return run_task(config, prepared, task=TASK, prefix=f"{config.loss}-{config.backbone}", monitor="val/miou",
                    mode="max", callbacks=callbacks, test=True, headline=results.headline, metrics=results.metrics,
                    results=lambda run, history, test: results.write_results(module, data, served, config, run,
                                                                             history, test))


def parse_config(argv=None):
    return parse(SegmentationConfig, argv, "segmentation.py", "Fine-tune the last layer of a COCO-pretrained "
                 "DeepLabV3 for flower/background segmentation on Oxford17.", "other modes (each has its own --help):\n"
                 "  python segmentation.py --predict IMAGE|FOLDER ...  flower masks for your own images\n"
                 "  python segmentation.py --export onnx               export a trained network\n"
                 "example: python segmentation.py --loss iou; tensorboard --logdir logs/")


def main(argv=None):
    return entry_point(argv, COMMANDS, train, parse_config)


if __name__ == "__main__":
    sys.exit(main())
