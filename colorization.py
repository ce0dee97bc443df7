"""Colorization as classification on CIFAR-10 horses (homework part 1).

A greyscale 32x32 image goes in; for every pixel the model picks one of 24 k-means colours
(`color/`). Run `python colorization.py UNet` (or PoolUpsampleNet, ConvTransposeNet); see --help.

Where things live: the models in `models/`, the data and its split in `data/cifar.py`, the palette
in `color/`, run folders / figures / Trainer flags in `training/`.
"""
import argparse
import hashlib
import sys
from functools import partial

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from color.palette import palette_to_rgb
from data.cifar import CIFARHorses
from inference.cli import add_predict_args, check_predict_args
from models import MODELS, build_model
from colorization_sweep import run_sweep
from training.callbacks import ValidationGrid
from training.cli import (HelpFormatter, add_perf_args, add_run_args, add_trainer_args, positive_int,
                          quiet_known_warnings, run_main)
from training.figures import plot_curves, save_image_rows
from training.metrics import BatchMean
from training.runs import reuse_or_train, run_settings
from training.task import Prepared, run_task

TASK = "colorization"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def pixel_classes(logits):
    """Index of the largest logit per pixel, (N, C, H, W) -> (N, H, W): argmax over dim 1.
    `max(dim).indices` returns the same (first) index and is about 3x faster than argmax on CPU."""
    return logits.max(dim=1).indices


class ColorizationModule(pl.LightningModule):
    """Any registered colorization model + pixel-wise cross-entropy + pixel accuracy."""

    def __init__(self, model="UNet", kernel=3, num_filters=32, num_colours=24, num_in_channels=1,
                 lr=1e-3, optimizer="adamw", weight_decay=0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model, kernel=kernel, num_in_channels=num_in_channels,
                                 num_filters=num_filters, num_colours=num_colours)
        # validate_args=False: the targets are palette indices by construction, and the checks
        # (torch.unique over every pixel, every step) cost more than the metric itself.
        self.train_acc = MulticlassAccuracy(num_colours, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_colours, average="micro", validate_args=False)
        self.train_loss, self.val_loss = BatchMean(), BatchMean()  # exact epoch means under DDP too

    def forward(self, grey):
        return self.model(grey)

    def _step(self, batch, stage, accuracy, batch_idx=0):
        grey, target = batch
        logits = self(grey)
        loss = F.cross_entropy(logits, target)
        accuracy.update(pixel_classes(logits.detach()), target)  # update(), not forward(): no per-batch value needed
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(loss, len(target))
        # Epoch-level values only, synced across DDP ranks once, when Lightning computes them at
        # the epoch's end. Registering the Metric objects on the first batch is enough: a self.log
        # call costs Lightning ~1-4 ms, as much as a whole GPU step here.
        if batch_idx == 0:
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", self.train_acc, batch_idx)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc, batch_idx)

    @torch.no_grad()
    def predict_indices(self, grey):
        """Palette index per pixel (argmax of the logits)."""
        return pixel_classes(self(grey))

    def on_save_checkpoint(self, checkpoint):
        # Prediction (inference/colorize.py) must decode with the colours the classes were trained on.
        palette = getattr(self.trainer.datamodule, "palette", None)
        if palette is not None:
            checkpoint["palette"] = palette.tolist()

    def configure_optimizers(self):
        opt = OPTIMIZERS[self.hparams.optimizer]
        return opt(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def sample_rows(module, datamodule, n=8):
    """(label, images) rows for the fixed validation samples: grey input | prediction | ground truth."""
    grey, target, _ = datamodule.sample_batch(n)
    was_training = module.training
    module.eval()
    pred = module.predict_indices(grey.to(module.device)).cpu()
    module.train(was_training)
    palette = datamodule.palette
    return [("greyscale input", grey), ("prediction", palette_to_rgb(pred, palette)),
            ("ground truth", palette_to_rgb(target, palette))]


def validation_grid():
    """The TensorBoard grid of fixed validation images, logged after every validation epoch."""
    return ValidationGrid(sample_rows, "val/samples (grey | prediction | truth)", 8)


def write_results(module, datamodule, args, run, trainer, history, checkpoint, test_metrics):
    """curves.png and samples.png in the run's results folder; returns the task's summary fields."""
    name = module.hparams.model
    plot_curves(history.history, [("cross-entropy loss", ["train/loss", "val/loss"]),
                                  ("pixel accuracy", ["train/acc", "val/acc"])],
                run.results / "curves.png", f"{name}: loss and accuracy per epoch")
    save_image_rows(sample_rows(module, datamodule), run.results / "samples.png",
                    f"{name} after {len(history.history)} epochs: validation samples")
    best_loss, best_epoch = history.best("val/loss", "min")
    best_acc, best_acc_epoch = history.best("val/acc", "max")
    return dict(
        model=name, hyperparameters=dict(module.hparams), batch_size=args.batch_size, seed=args.seed,
        best_val_loss=best_loss, best_val_loss_epoch=best_epoch,
        best_val_acc=best_acc, best_val_acc_epoch=best_acc_epoch,
        final_val_loss=history.last("val/loss"), final_val_acc=history.last("val/acc"),
        final_train_loss=history.last("train/loss"), final_train_acc=history.last("train/acc"),
        data=datamodule.source)


def data_settings(datamodule):
    """What of the data decides a run's numbers: the tensors read (grey inputs and palette targets)."""
    palette = hashlib.sha256(datamodule.palette.float().numpy().tobytes()).hexdigest()[:16]
    return {"checksum": datamodule.data_checksum(), "palette": palette}


def prepare(args):
    """The seeded DataModule (data found or downloaded, split), the module and the run settings."""
    pl.seed_everything(args.seed, workers=True)
    datamodule = CIFARHorses(data_dir=args.data_dir, batch_size=args.batch_size, palette=args.palette,
                             num_workers=args.num_workers, seed=args.seed)
    datamodule.prepare_data()  # fail early, before any run folder is made, if the data is missing
    datamodule.setup("fit")
    module = ColorizationModule(model=args.model, kernel=args.kernel, num_filters=args.num_filters,
                                num_colours=datamodule.num_colours, lr=args.lr, optimizer=args.optimizer,
                                weight_decay=args.weight_decay)
    return Prepared(module, datamodule, run_settings(TASK, args, module.hparams, data_settings(datamodule)))


def train(args, prepared=None):
    """Train one model as the flags say; returns the summary dict (global rank 0) or None."""
    prepared = prepared or prepare(args)
    return run_task(TASK, args, prepared, prefix=args.model, monitor="val/loss", mode="min",
                    callbacks=[validation_grid()], results=partial(write_results, prepared.module, prepared.datamodule,
                                                                   args), headline=headline)


def headline(s):
    return (f"{s['model']}: best val loss {s['best_val_loss']:.4f} (epoch {s['best_val_loss_epoch'] + 1}), "
            f"final val acc {s['final_val_acc']:.4f}")


def train_or_reuse(args, log=print):
    """(summary, trained): a finished run with these settings, or one trained now (report, sweep)."""
    return reuse_or_train(TASK, prepare, train, args, log)


def render_samples(summary, datamodule, path, logs_dir):
    """Validation samples of a finished run (from its last checkpoint), titled with its batch size; None
    when the checkpoint is gone."""
    from training.checkpoints import load_module
    from training.runs import summary_checkpoint

    ckpt = summary_checkpoint(summary, "last", logs_dir)
    if ckpt is None:
        return None
    module = load_module(ColorizationModule, ckpt, TASK)
    title = (f"{summary['model']}, batch size {summary['batch_size']}, after {summary['epochs']} epoch(s): "
             f"validation samples")
    save_image_rows(sample_rows(module, datamodule), path, title)
    return path


def build_parser():
    parser = argparse.ArgumentParser(
        prog="colorization.py", formatter_class=HelpFormatter,
        description="Train a colorization CNN on CIFAR-10 horses: greyscale in, one of 24 colours per pixel out.",
        epilog="example: python colorization.py UNet --epochs 25 --batch-size 100\n"
               "         tensorboard --logdir logs/")
    choices = sorted(MODELS)
    parser.add_argument("model", nargs="?", choices=choices, metavar="MODEL",
                        help=f"model to train: {', '.join(choices)}")
    parser.add_argument("--model", dest="model_flag", choices=choices, metavar="MODEL", help="same as the positional MODEL")
    m = parser.add_argument_group("model")
    m.add_argument("--kernel", type=positive_int, default=3, help="convolution kernel size (1..7, odd or even)")
    m.add_argument("--num-filters", "--num_filters", type=positive_int, default=32, help="NF: filters of the first layer")
    m.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw", help="optimiser")
    m.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the optimiser")
    m.add_argument("--palette", default=None,
                   help="palette .npy file of K RGB colours in [0,1] (default: color/color_kmeans24_cat7.npy)")
    add_run_args(parser, epochs=25, batch_size=100, lr=1e-3, data_dir="datasets")
    add_trainer_args(parser)
    add_predict_args(parser, TASK)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", metavar="B", default=None,
                        help="batch-size sweep (homework Q1.2.5): one run per batch size, compared in "
                             "RESULTS_DIR/colorization/batch_sweep/; see colorization_sweep.py")
    add_perf_args(parser)
    return parser


def parse_args(argv=None):
    """Parse and check the flags; bad usage exits 2 with argparse's message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model and args.model_flag and args.model != args.model_flag:
        parser.error(f"two different models given: {args.model} and --model {args.model_flag}")
    args.model = args.model or args.model_flag
    check_predict_args(parser, args)
    if args.model is None and not args.predict:  # --predict takes the model from the checkpoint
        parser.error(f"choose a model: {', '.join(sorted(MODELS))}")
    return args


def main(argv=None):
    quiet_known_warnings()
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]  # for the resume hint
    if args.predict:
        from inference.colorize import predict
        return run_main(predict, args)
    if args.batch_sizes:  # homework Q1.2.5
        return run_main(partial(run_sweep, train_one=train_or_reuse, render=render_samples), args)
    return run_main(train, args)


if __name__ == "__main__":
    sys.exit(main())
