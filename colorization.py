"""Colorization as classification on CIFAR-10 horses (homework part 1).

A greyscale 32x32 image goes in; for every pixel the model picks one of 24 k-means colours (color/).

    python colorization.py UNet                          # train (or PoolUpsampleNet, ConvTransposeNet); --help
    python colorization.py --predict photo.jpg           # colourise your own images (inference/colorize.py)
    python colorization.py ConvTransposeNet --batch-sizes 32 64 128   # batch-size sweep (colorization_sweep.py)
    python colorization.py UNet --export onnx            # export a trained net (inference/export.py)

This file: the config (every default, once), the LightningModule, `prepare()` and the entry point.
"""
import sys
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from color.metrics import ColourQuality, plain, reference
from color.palette import DEFAULT_TEMPERATURE, load_palette
from color.rebalance import class_weights_from_targets
from data.cifar import CIFARHorses
from errors import UsageError
from losses.cross_entropy import CrossEntropy
from losses.rebalanced import RebalancedCrossEntropy
from models.registry import MODELS, build_model
from reporting import colorization as results
from training.callbacks import CustomScalars
from training.config import (RunConfig, entry_point, option, parse, positive_float, positive_int, settings,
                             unit_float)
from training.runs import check_resume_path, run_settings
from training.speed import Speed
from training.trainer import Prepared, run_task

TASK = "colorization"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
COMMANDS = {"--predict": "inference.colorize:main", "--batch-sizes": "colorization_sweep:main",
            "--export": "inference.export:colorization_main"}


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ColorizationConfig(RunConfig):
    model: str | None = option(None, "model to train", choices=tuple(MODELS), group="model", positional=True,
                               shown="none, give one")
    kernel: int = option(3, "convolution kernel size (1..7, odd or even)", check=positive_int, group="model")
    num_filters: int = option(32, "NF: filters of the first layer", flags=("--num_filters",), check=positive_int,
                              group="model")
    optimizer: str = option("adamw", "optimiser", choices=tuple(OPTIMIZERS), group="model")
    weight_decay: float = option(0.0, "weight decay of the optimiser", group="model")
    rebalance: float | None = option(None, "class-rebalanced loss (Zhang et al. 2016, eq. 3-4): weight each pixel "
                                     "by its target colour's ((1-LAMBDA) p + LAMBDA/24)^-1, p = smoothed colour "
                                     "distribution of the training pixels; 1 = plain CE, 0.5 = the paper's",
                                     check=unit_float, metavar="LAMBDA", group="model", shown="off, the homework's CE")
    epochs: int = option(25, "number of training epochs", flags=("--nepochs",), check=positive_int)
    batch_size: int = option(100, "images per batch (per device)", flags=("--batch_size",), check=positive_int)
    lr: float = option(1e-3, "learning rate", flags=("--learn-rate", "--learn_rate"), check=positive_float)
    data_dir: str = option("datasets", "folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                           "(downloaded here when missing)", group="data", setting=False)
    palette: str | None = option(None, "palette .npy of K RGB colours in [0, 1]", group="data", setting=False,
                                 shown="color/color_kmeans24_cat7.npy")
    compile: bool | None = option(None, "torch.compile the net (a performance flag: same numbers)", group="speed",
                                  setting=False, shown="on where it is faster: CPU and CUDA")
    channels_last: bool | None = option(None, "channels-last memory format", group="speed", setting=False,
                                        shown="on for CUDA, off otherwise")


# ----------------------------------------------------------------------------- model

class ColorizationModule(pl.LightningModule):
    """A registered colourisation net + pixel-wise cross-entropy (plain, or rebalanced with `rebalance`)
    + pixel accuracy + colour quality (color/metrics.py) from the validation pass.

    `train/loss` and `val/loss` are always the plain cross-entropy (comparable with the homework);
    a rebalanced run also logs `*/loss_weighted`, the loss it minimises. The palette is a
    hyper-parameter, so every checkpoint decodes with the colours its classes were trained on.
    """

    QUALITY_FIGURE_EVERY = 5  # epochs between the per-colour and confusion figures in TensorBoard (and the last)

    def __init__(self, model="UNet", kernel=3, num_filters=32, palette=None, lr=1e-3, optimizer="adamw",
                 weight_decay=0.0, rebalance=None):
        super().__init__()
        palette = load_palette().tolist() if palette is None else [list(map(float, c)) for c in palette]
        self.save_hyperparameters()
        colours = len(palette)
        self.model = build_model(model, kernel=kernel, num_in_channels=1, num_filters=num_filters, num_colours=colours)
        self.rebalanced = rebalance is not None
        self.criterion = RebalancedCrossEntropy(colours) if self.rebalanced else CrossEntropy()
        # validate_args=False: the targets are palette indices by construction; the checks cost more than the metric
        self.acc = torch.nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(colours, average="micro", validate_args=False)
                                        for s in ("train", "val")})
        self.losses = torch.nn.ModuleDict({f"{s}_{k}": MeanMetric() for s in ("train", "val")  # exact epoch means
                                           for k in ("loss", "loss_weighted")})
        self.quality, self.last_quality = None, None  # ColourQuality (made at setup); its last epoch's values

    def forward(self, grey):
        return self.model(grey)

    def setup(self, stage):
        data = self.trainer.datamodule
        grey, target, rgb = data.val_set.tensors
        self.quality = ColourQuality(self.hparams.palette, reference(rgb, target, data.palette), DEFAULT_TEMPERATURE)
        # Before Lightning restores a checkpoint: on resume the stored weights then replace these.
        if stage == "fit" and self.rebalanced and not self.criterion.weights_set:
            self.criterion.set_weights(*class_weights_from_targets(data.train_set.tensors[1], data.palette,
                                                                   self.hparams.rebalance))

    def _step(self, batch, stage, batch_idx):
        grey, target = batch[0], batch[1]
        logits = self(grey)
        plain, loss = self.criterion.terms(logits, target)
        pred = logits.detach().max(dim=1).indices  # = argmax(dim=1), about 3x faster on CPU
        self.acc[f"{stage}_acc"].update(pred, target)
        names = ["loss", "loss_weighted"] if self.rebalanced else ["loss"]
        for name, value in zip(names, (plain, loss)):
            mean = self.losses[f"{stage}_{name}"]
            mean.update(value.detach(), target.numel())
            if batch_idx == 0:  # a Metric logged once is computed (and synced) over the epoch; each log costs ~2 ms
                self.log(f"{stage}/{name}", mean, on_step=False, on_epoch=True, prog_bar=name == "loss")
        if batch_idx == 0:
            self.log(f"{stage}/acc", self.acc[f"{stage}_acc"], on_step=False, on_epoch=True, prog_bar=True)
        return loss, logits, pred

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", batch_idx)[0]

    def validation_step(self, batch, batch_idx):
        _, logits, pred = self._step(batch, "val", batch_idx)
        last = self.current_epoch + 1 == self.trainer.max_epochs and not self.trainer.sanity_checking
        self.quality.update(logits, batch[1], batch[2], pred=pred, full=last)

    def on_validation_epoch_end(self):
        quality = plain(self.quality.compute())  # on every process: the states are summed across them
        self.quality.reset()
        if self.trainer.sanity_checking:
            return
        self.last_quality = quality
        for key in results.QUALITY_SCALARS:
            if quality[key] is not None:
                self.log(f"val/{key}", float(quality[key]), on_step=False, on_epoch=True)
        epoch = self.current_epoch + 1
        if epoch == self.trainer.max_epochs or epoch % self.QUALITY_FIGURE_EVERY == 0:
            results.log_quality_figures(self, quality, epoch)

    @torch.no_grad()
    def predict_indices(self, grey):
        """Palette index per pixel (argmax of the logits)."""
        return self(grey).max(dim=1).indices

    def configure_optimizers(self):
        opt = OPTIMIZERS[self.hparams.optimizer]
        return opt(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


# ----------------------------------------------------------------------------- prepare, train

def prepare(config):
    """The seeded DataModule (data found or downloaded), the module and the run settings."""
    if config.model is None:
        raise UsageError(f"choose a model: {', '.join(MODELS)}")
    check_resume_path(config.resume)
    pl.seed_everything(config.seed, workers=True)
    datamodule = CIFARHorses(data_dir=config.data_dir, batch_size=config.batch_size, palette=config.palette,
                             num_workers=config.num_workers, seed=config.seed)
    datamodule.prepare_data()  # fail early, before any run folder is made, if the data is missing
    datamodule.setup("fit")
    module = ColorizationModule(model=config.model, kernel=config.kernel, num_filters=config.num_filters,
                                palette=datamodule.palette.tolist(), lr=config.lr, optimizer=config.optimizer,
                                weight_decay=config.weight_decay, rebalance=config.rebalance)
    return Prepared(module, datamodule, run_settings(TASK, settings(config), datamodule.settings()))


def trainer_callbacks(config, prepared):
    """The task's own callbacks (also what benchmarks/colorization.py trains with)."""
    return [results.validation_grid(prepared.datamodule), CustomScalars(results.layout(prepared.module.rebalanced)),
            Speed(config.compile, config.channels_last)]


def train(config, prepared=None):
    """Train one model as `config` says; returns the summary dict (global rank 0) or None."""
    prepared = prepared or prepare(config)
    module, datamodule = prepared.module, prepared.datamodule
    return run_task(config, prepared, task=TASK, prefix=config.model, mode="min",
                    callbacks=trainer_callbacks(config, prepared),
                    monitor=results.monitor(module.rebalanced), headline=results.headline, metrics=results.metrics,
                    results=lambda run, history, _: results.write_results(module, datamodule, config, run, history))


def parse_config(argv=None):
    return parse(ColorizationConfig, argv, "colorization.py",
                 "Train a colorization CNN on CIFAR-10 horses: greyscale in, one of 24 colours per pixel out.",
                 "other modes (each has its own --help):\n"
                 "  python colorization.py [MODEL] --predict IMAGE|FOLDER ...  colourise your own images\n"
                 "  python colorization.py MODEL --batch-sizes B [B ...]       batch-size sweep (homework Q1.2.5)\n"
                 "  python colorization.py [MODEL] --export onnx               export a trained net\n"
                 "example: python colorization.py UNet --epochs 25 --batch-size 100; tensorboard --logdir logs/")


def main(argv=None):
    return entry_point(argv, COMMANDS, train, parse_config)


if __name__ == "__main__":
    sys.exit(main())
