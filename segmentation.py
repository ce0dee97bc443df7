"""Flower / background segmentation on Oxford17 by fine-tuning DeepLabV3's last layer (homework part 2).

A COCO-pretrained torchvision DeepLabV3 is frozen; only `classifier[4]`, replaced by a new 1x1 conv
with two outputs, trains, with cross-entropy or the soft IoU loss. Run
`python segmentation.py --loss ce` or `--loss iou`; see --help.

Where things live: the model builder in `models/deeplabv3.py`, the soft IoU in `losses/iou.py`, the
data, split and masks in `data/oxford17.py`, run folders / figures / Trainer flags in `training/`.
"""
import argparse
import sys
from functools import partial

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.functional.classification.jaccard import _jaccard_index_reduce

from data.feature_store import FeatureStore, default_store_dir
from data.oxford17 import Oxford17
from inference.cli import add_predict_args, check_predict_args
from losses.iou import SoftIoULoss
from models.deeplabv3 import BACKBONES, build_deeplabv3
from errors import UsageError
from training.callbacks import ValidationGrid
from training.cli import (HelpFormatter, add_perf_args, add_run_args, add_trainer_args, positive_int,
                          quiet_known_warnings, run_main)
from training.figures import mask_to_rgb, plot_curves, save_image_rows
from training.metrics import BatchMean
from training.runs import reuse_or_train, run_settings
from training.task import Prepared, run_task
from training.tensorboard import custom_scalars

TASK = "segmentation"
IGNORE = 255
LOSSES = ("ce", "iou")
MIN_IMAGE_SIZE = 32  # below this the backbone's feature map is smaller than the ASPP's kernels


def make_loss(name):
    """Cross-entropy or the homework's soft IoU; both skip pixels labelled IGNORE."""
    return nn.CrossEntropyLoss(ignore_index=IGNORE) if name == "ce" else SoftIoULoss(ignore_index=IGNORE)


class ConfusionIoU(Metric):
    """IoU over a whole split from one 2x2 confusion matrix (summed across processes under DDP).

    The same numbers as torchmetrics' MulticlassJaccardIndex(2, average, ignore_index=255) (its own
    reduction runs on the matrix), about 30x faster on CPU: one bincount of target*2 + pred per batch,
    where ignored pixels (255*2 + p) fall beyond the 4 counted bins."""

    full_state_update = False

    def __init__(self, average="macro"):
        super().__init__()
        self.average = average
        self.add_state("confusion", default=torch.zeros(2, 2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds, target):
        codes = target.reshape(-1).long() * 2 + preds.reshape(-1).long()
        self.confusion += torch.bincount(codes, minlength=2 * IGNORE + 2)[:4].view(2, 2)

    def compute(self):
        return _jaccard_index_reduce(self.confusion, average=self.average, ignore_index=IGNORE)


class SegmentationModule(pl.LightningModule):
    """Frozen DeepLabV3 with a new last layer + CE or soft IoU loss + mIoU over the whole split."""

    def __init__(self, loss="ce", backbone="resnet101", weights="coco", lr=1e-3, image_size=224,
                 feature_cache=True, feature_store=None):
        """feature_cache: train on the frozen trunk's features, computed once; feature_store: the folder
        of the persistent store (train, val and test features on disk, reused by later runs), or
        None to keep train/val features in memory for this run only (the test split then runs the
        full network). Where the store lives is not a hyper-parameter: it changes no number."""
        super().__init__()
        self.save_hyperparameters(ignore=["feature_store"])
        self.feature_store = feature_store
        self.model = build_deeplabv3(backbone, weights=weights, num_classes=2)
        self.criterion = make_loss(loss)
        # Accumulated over the whole split, so the epoch value is not a mean of batch means.
        # validate_args=False: masks are {0, 1, 255} by construction; the checks (torch.unique over
        # every pixel of every batch) took 5x longer than the metric itself.
        self.miou = nn.ModuleDict({s: ConfusionIoU("macro") for s in ("val", "test")})
        self.class_iou = nn.ModuleDict({s: ConfusionIoU("none") for s in ("val", "test")})
        self.train_loss, self.val_loss, self.test_loss = BatchMean(), BatchMean(), BatchMean()  # exact under DDP
        self.cached = False  # True once train/val batches hold cached features instead of images

    def forward(self, images):
        return self.model(images)

    def on_fit_start(self):
        self._prepare_features()

    def on_test_start(self):
        self._prepare_features()

    def _prepare_features(self):
        """The trunk is frozen and in eval mode: its output for an image never changes, so it is
        computed once (or read from the persistent store) and only the new layer runs on it (the
        DataModule swaps its datasets for feature datasets). Under DDP one process per machine
        reads or writes the store, then every process reads it."""
        datamodule = self.trainer.datamodule
        if not self.hparams.feature_cache or datamodule is None or not hasattr(datamodule, "cache_features"):
            return
        store = None if self.feature_store is None else FeatureStore(self.feature_store)
        identity = {**self.model.feature_identity(), "precision": str(self.trainer.precision)}
        with self.trainer.precision_plugin.forward_context():  # e.g. fp16 autocast with 16-mixed
            self.cached = datamodule.cache_features(
                self.model.features, self.device, identity=identity, store=store,
                writer=self.trainer.local_rank == 0, barrier=self.trainer.strategy.barrier,
                feature_shape=self.model.feature_shape(datamodule.image_size))

    def _logits(self, x, size):
        """Logits from a batch of images (full network) or of stored trunk features (new layer only)."""
        is_features = x.shape[1] == self.model.last_layer.in_channels
        return self.model.head(x, size) if is_features else self.model(x)

    def training_step(self, batch, batch_idx):
        x, mask = batch
        loss = self.criterion(self._logits(x, mask.shape[-2:]), mask)
        self.train_loss.update(loss, len(mask))
        if batch_idx == 0:  # a Metric logged once is computed over the whole epoch; each self.log costs ~1-4 ms
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch, stage, batch_idx=0):
        x, mask = batch
        logits = self._logits(x, mask.shape[-2:])
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(self.criterion(logits, mask), len(mask))
        preds = logits.max(dim=1).indices  # = argmax(dim=1), about 20x faster on CPU
        self.miou[stage].update(preds, mask)
        self.class_iou[stage].update(preds, mask)
        if batch_idx == 0:  # registered once, computed (and synced under DDP) over the whole split
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True)
            self.log(f"{stage}/miou", self.miou[stage], on_step=False, on_epoch=True, prog_bar=True)

    def _log_flower_iou(self, stage):
        self.log(f"{stage}/iou_flower", self.class_iou[stage].compute()[1])
        self.class_iou[stage].reset()

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", batch_idx)

    def on_validation_epoch_end(self):
        self._log_flower_iou("val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", batch_idx)  # stored features with a persistent store, else images

    def on_test_epoch_end(self):
        self._log_flower_iou("test")

    @torch.no_grad()
    def predict_masks(self, images):
        """0/1 mask per pixel for normalised images."""
        return self(images).max(dim=1).indices

    def on_save_checkpoint(self, checkpoint):
        # What prediction (inference/segment.py) needs to preprocess images exactly as in training.
        checkpoint["preprocessing"] = {"image_size": self.hparams.image_size, "mean": list(self.model.mean),
                                       "std": list(self.model.std)}

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)


def sample_rows(module, datamodule, n=4):
    """(label, images) rows for fixed validation images: image | ground truth | prediction."""
    images, masks, normalised = datamodule.val_samples(n)
    if module.cached:  # these images' trunk output is in the feature cache: only the new layer runs
        with torch.no_grad():
            index = torch.as_tensor(datamodule.val_sample_indices(n), dtype=torch.long)
            features = datamodule.val_set.tensors[0][index].to(module.device)
            preds = module.model.head(features, masks.shape[-2:]).max(dim=1).indices.cpu()
    else:
        was_training = module.training
        module.eval()
        preds = module.predict_masks(normalised.to(module.device)).cpu()
        module.train(was_training)
    return [("image", images.float() / 255), ("ground truth", mask_to_rgb(masks, ignore_index=IGNORE)),
            ("prediction", mask_to_rgb(preds))]


def validation_grid():
    """The TensorBoard grid of fixed validation images (several flower classes), logged after every
    validation epoch."""
    return ValidationGrid(sample_rows, "val/predictions (image | truth | prediction)", 6)


BASELINE_RULE = ("no image: the mean training mask at the training size (flower share of each pixel over "
                 "the training masks, unlabelled pixels left out), flower where it is >= 0.5")


def mean_mask_prediction(train_masks):
    """(S, S) 0/1 prediction of the no-image baseline from uint8 training masks {0, 1, 255}."""
    masks = torch.as_tensor(train_masks)
    labelled = (masks != IGNORE).sum(0)
    flower = (masks == 1).sum(0)
    return (flower.double() >= 0.5 * labelled.double()).long() * (labelled > 0)


def no_image_baseline(datamodule):
    """The same prediction for every image (`mean_mask_prediction`), scored with the runs' mIoU and
    flower IoU on val and test: how much of a run's mIoU needs no image at all."""
    prior = mean_mask_prediction(datamodule.split_masks("train"))
    out = {"rule": BASELINE_RULE, "flower_pixels": int(prior.sum())}
    for split in ("val", "test"):
        masks = datamodule.split_masks(split).long()
        if not len(masks):
            continue
        miou = MulticlassJaccardIndex(2, average="macro", ignore_index=IGNORE)
        per_class = MulticlassJaccardIndex(2, average="none", ignore_index=IGNORE)
        preds = prior.expand_as(masks)
        out[f"{split}_miou"] = float(miou(preds, masks))
        out[f"{split}_iou_flower"] = float(per_class(preds, masks)[1])
    return out


def write_results(module, datamodule, args, run, trainer, history, checkpoint, test_metrics):
    """curves.png and predictions.png in the run's results folder; returns the task's summary fields."""
    hp = module.hparams
    title = f"DeepLabV3-{hp.backbone} ({hp.weights or 'random'} weights), {hp.loss} loss"
    plot_curves(history.history, [("train loss", ["train/loss"]), ("validation IoU", ["val/miou", "val/iou_flower"])],
                run.results / "curves.png", f"{title}: per epoch")
    save_image_rows(sample_rows(module, datamodule, 6), run.results / "predictions.png",
                    f"{title}: validation images after {len(history.history)} epochs")
    best_miou, best_epoch = history.best("val/miou", "max")
    return dict(
        loss=hp.loss, backbone=hp.backbone, weights=hp.weights,
        split=args.split, image_size=hp.image_size, batch_size=args.batch_size, lr=hp.lr, seed=args.seed,
        feature_cache=module.cached, feature_store=datamodule.feature_store_info,
        baseline=no_image_baseline(datamodule),
        best_val_miou=best_miou, best_val_miou_epoch=best_epoch,
        final_val_miou=history.last("val/miou"), final_val_iou_flower=history.last("val/iou_flower"),
        test_miou=test_metrics.get("test/miou"), test_iou_flower=test_metrics.get("test/iou_flower"),
        test_checkpoint=checkpoint.best_model_path,
        data={**datamodule.source, "checksum": datamodule.data_checksum()},
    )


def data_settings(datamodule, args):
    """What of the data decides a run's numbers: the images and masks read (checksum: as resized, with
    the unlabelled rule applied, in split order), the split and the augmentation."""
    return {"checksum": datamodule.data_checksum(), "split": {"k": args.split, **datamodule.split_info},
            "image_size": args.image_size, "unlabelled": args.unlabelled, "augment": args.augment}


def prepare(args):
    """The seeded module (frozen DeepLabV3 + new last layer), the DataModule (data found, split) and the settings."""
    if args.image_size < MIN_IMAGE_SIZE:
        raise UsageError(f"--image-size {args.image_size} is too small for DeepLabV3; use at least {MIN_IMAGE_SIZE}")
    pl.seed_everything(args.seed, workers=True)
    weights = None if args.weights == "none" else args.weights
    module = SegmentationModule(loss=args.loss, backbone=args.backbone, weights=weights, lr=args.lr,
                                image_size=args.image_size, feature_cache=not (args.no_feature_cache or args.augment),
                                feature_store=args.feature_store or default_store_dir())
    datamodule = Oxford17(data_dir=args.data_dir, split=args.split, image_size=args.image_size,
                          batch_size=args.batch_size, num_workers=args.num_workers, unlabelled=args.unlabelled,
                          seed=args.seed, augment=args.augment, mean=module.model.mean, std=module.model.std)
    datamodule.prepare_data()  # fail early, before any run folder is made, if the data is missing
    datamodule.setup("fit")
    return Prepared(module, datamodule, run_settings(TASK, args, module.hparams, data_settings(datamodule, args)))


def train(args, prepared=None):
    """Fine-tune as the flags say, evaluate the best checkpoint on the test split; returns the summary."""
    prepared = prepared or prepare(args)
    return run_task(TASK, args, prepared, prefix=f"{args.loss}-{args.backbone}", monitor="val/miou", mode="max",
                    callbacks=[validation_grid(), custom_scalars(TASK)], test=True, headline=headline,
                    results=partial(write_results, prepared.module, prepared.datamodule, args))


def headline(s):
    return (f"best val mIoU {s['best_val_miou']:.4f} at epoch {s['best_val_miou_epoch'] + 1}; "
            f"test mIoU {s['test_miou']:.4f}; no-image baseline (mean training mask): val mIoU "
            f"{s['baseline']['val_miou']:.4f}, test mIoU {s['baseline']['test_miou']:.4f}")


def train_or_reuse(args, log=print):
    """(summary, trained): a finished run with these settings, or one trained now (report)."""
    return reuse_or_train(TASK, prepare, train, args, log)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="segmentation.py", formatter_class=HelpFormatter,
        description="Fine-tune the last layer of a COCO-pretrained DeepLabV3 for flower/background "
                    "segmentation on Oxford17.",
        epilog="example: python segmentation.py --loss iou\n         tensorboard --logdir logs/")
    m = parser.add_argument_group("model and loss")
    m.add_argument("--loss", choices=LOSSES, help="ce: cross-entropy; iou: the soft IoU loss (required for training)")
    m.add_argument("--backbone", choices=BACKBONES, default="resnet101", help="DeepLabV3 backbone")
    m.add_argument("--weights", choices=("coco", "none"), default="coco",
                   help="coco: torchvision's COCO-trained weights (downloaded once); none: random frozen network (tests)")
    m.add_argument("--no-feature-cache", action="store_true",
                   help="run the whole network every step instead of caching the frozen features once")
    m.add_argument("--augment", action="store_true", help="random horizontal flips (turns the feature cache off)")
    m.add_argument("--feature-store", metavar="DIR", default=None,
                   help="folder of the persistent store of frozen-trunk features (train, val, test), reused by "
                        "every later run with the same backbone, weights, image size and images "
                        "(default: $XDG_CACHE_HOME/image2image/features, else .cache/features)")
    d = parser.add_argument_group("data")
    d.add_argument("--split", type=int, choices=(1, 2, 3), default=1, help="which of the three official splits")
    d.add_argument("--image-size", type=positive_int, default=224, help="images and masks are resized to this square size")
    d.add_argument("--unlabelled", choices=("ignore", "background"), default="ignore",
                   help="the trimaps' black band at flower edges: left out of loss and metric, or counted as background")
    add_run_args(parser, epochs=10, batch_size=16, lr=1e-3, data_dir="datasets/oxford17")
    add_trainer_args(parser)
    add_predict_args(parser, TASK)
    add_perf_args(parser)
    return parser


def main(argv=None):
    quiet_known_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_predict_args(parser, args)
    if args.predict:
        from inference.segment import predict
        return run_main(predict, args)
    if args.loss is None:  # not required by argparse: --predict takes the model from the checkpoint
        parser.error(f"the following arguments are required: --loss (choose from {', '.join(LOSSES)})")
    args.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]  # for the resume hint
    return run_main(train, args)


if __name__ == "__main__":
    sys.exit(main())
