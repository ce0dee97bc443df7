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
from torchmetrics.classification import MulticlassAccuracy

from color.figures import confusion_figure, per_colour_figure, save_colour_figures
from color.metrics import colour_quality
from color.palette import palette_to_rgb
from color.rebalance import class_weights_from_targets, weighted_cross_entropy
from data.cifar import CIFARHorses
from errors import UsageError
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
from training.tensorboard import custom_scalars

TASK = "colorization"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def pixel_classes(logits):
    """Index of the largest logit per pixel, (N, C, H, W) -> (N, H, W): argmax over dim 1.
    `max(dim).indices` returns the same (first) index and is about 3x faster than argmax on CPU."""
    return logits.max(dim=1).indices


class ColorizationModule(pl.LightningModule):
    """Any registered colorization model + pixel-wise cross-entropy + pixel accuracy.

    rebalance: None (the homework's plain cross-entropy) or Zhang et al.'s lambda in [0, 1]: the
    training loss weights each pixel by its target colour's weight (color/rebalance.py), computed from
    the training split at the start of fit and kept in the buffer `class_weights`, so checkpoints,
    resume and predict carry them. `train/loss` and `val/loss` are always the plain cross-entropy
    (comparable with the homework); `train/loss_weighted` / `val/loss_weighted` the rebalanced one.
    After every validation epoch the colour-quality metrics (color/metrics.py) of all validation
    images are logged (rank 0) as `val/colourfulness_*`, `val/mae_rgb_*` and `val/mean_recall`.
    """

    QUALITY_FIGURE_EVERY = 5  # epochs between the per-colour and confusion figures in TensorBoard (and the last)

    def __init__(self, model="UNet", kernel=3, num_filters=32, num_colours=24, num_in_channels=1,
                 lr=1e-3, optimizer="adamw", weight_decay=0.0, rebalance=None):
        super().__init__()
        if rebalance is not None and not 0.0 <= rebalance <= 1.0:
            raise UsageError(f"--rebalance {rebalance}: lambda must lie in [0, 1] (1 = plain cross-entropy, "
                             f"0.5 = Zhang et al.'s choice)")
        self.save_hyperparameters()
        # Persistent buffers: saved in every checkpoint's state_dict and restored on resume and load.
        self.register_buffer("class_weights", torch.ones(num_colours))
        self.register_buffer("colour_prior", torch.zeros(num_colours))  # smoothed p (float32: any device)
        self.quality = None  # the last validation epoch's colour-quality dict
        self.model = build_model(model, kernel=kernel, num_in_channels=num_in_channels,
                                 num_filters=num_filters, num_colours=num_colours)
        # validate_args=False: the targets are palette indices by construction, and the checks
        # (torch.unique over every pixel, every step) cost more than the metric itself.
        self.train_acc = MulticlassAccuracy(num_colours, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_colours, average="micro", validate_args=False)
        self.train_loss, self.val_loss = BatchMean(), BatchMean()  # exact epoch means under DDP too
        self.train_loss_weighted, self.val_loss_weighted = BatchMean(), BatchMean()

    def forward(self, grey):
        return self.model(grey)

    @property
    def rebalanced(self):
        return self.hparams.get("rebalance") is not None

    def setup(self, stage):
        # Before Lightning restores a checkpoint: on resume the stored weights then replace these.
        if stage == "fit" and self.rebalanced and not bool(self.colour_prior.sum() > 0):
            dm = self.trainer.datamodule
            weights, prior = class_weights_from_targets(dm.train_set.tensors[1], dm.palette, self.hparams.rebalance)
            self.class_weights.copy_(weights)
            self.colour_prior.copy_(prior)

    def on_load_checkpoint(self, checkpoint):
        # Checkpoints written before rebalancing existed hold no weights: theirs were the plain CE.
        state = checkpoint.get("state_dict", {})
        state.setdefault("class_weights", torch.ones(self.hparams.num_colours))
        state.setdefault("colour_prior", torch.zeros(self.hparams.num_colours))

    def _step(self, batch, stage, accuracy, batch_idx=0):
        grey, target = batch
        logits = self(grey)
        plain, weighted = weighted_cross_entropy(logits, target, self.class_weights if self.rebalanced else None)
        loss = weighted  # what is optimised; the plain CE when rebalance is None
        accuracy.update(pixel_classes(logits.detach()), target)  # update(), not forward(): no per-batch value needed
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(plain, len(target))
        if self.rebalanced:
            getattr(self, f"{stage}_loss_weighted").update(weighted, len(target))
        # Epoch-level values only, synced across DDP ranks once, when Lightning computes them at
        # the epoch's end. Registering the Metric objects on the first batch is enough: a self.log
        # call costs Lightning ~1-4 ms, as much as a whole GPU step here.
        if batch_idx == 0:
            self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
            if self.rebalanced:
                self.log(f"{stage}/loss_weighted", getattr(self, f"{stage}_loss_weighted"), on_step=False,
                         on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", self.train_acc, batch_idx)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc, batch_idx)

    def on_validation_epoch_end(self):
        """Colour quality of every validation image (one more forward pass, on rank 0 only: it reads the
        whole validation set), as scalars every epoch and as figures every few epochs and at the end."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        self.quality = evaluate_colour_quality(self, self.trainer.datamodule)
        q = self.quality
        for key in ("colourfulness_pred", "colourfulness_true", "colourfulness_ratio", "mae_rgb_argmax",
                    "mae_rgb_annealed", "mean_recall"):
            if q[key] is not None:
                self.log(f"val/{key}", float(q[key]), on_step=False, on_epoch=True, rank_zero_only=True)
        epoch = self.current_epoch + 1
        last = epoch == self.trainer.max_epochs
        logger = self.trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_figure") and (
                last or epoch % self.QUALITY_FIGURE_EVERY == 0):
            name = f"{self.hparams.model} epoch {epoch}"
            logger.experiment.add_figure("val/colours (share and recall per palette colour)",
                                         per_colour_figure(q, name), self.current_epoch)
            logger.experiment.add_figure("val/confusion matrix (row-normalised)", confusion_figure(q, name),
                                         self.current_epoch)

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


def evaluate_colour_quality(module, datamodule):
    """color.metrics.colour_quality of `module` on all validation images (module left in its mode)."""
    grey, target = datamodule.val_set.tensors
    was_training = module.training
    module.eval()
    quality = colour_quality(module, grey, target, datamodule.val_rgb, datamodule.palette)
    module.train(was_training)
    return quality


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
    return ValidationGrid(sample_rows, "val/samples (grey | prediction | truth)", 8, scale=4)


def write_results(module, datamodule, args, run, trainer, history, checkpoint, test_metrics):
    """curves.png, samples.png, colour_recall.png and confusion.png in the run's results folder; returns the
    task's summary fields."""
    name = module.hparams.model
    rebalanced = module.rebalanced
    loss_keys = ["train/loss", "val/loss"] + (["train/loss_weighted", "val/loss_weighted"] if rebalanced else [])
    flag = f" --rebalance {module.hparams.rebalance:g}" if rebalanced else ""
    plot_curves(history.history, [("cross-entropy loss", loss_keys),
                                  ("pixel accuracy", ["train/acc", "val/acc"]),
                                  ("colourfulness of val images", ["val/colourfulness_pred", "val/colourfulness_true"])],
                run.results / "curves.png", f"{name}{flag}: per epoch")
    save_image_rows(sample_rows(module, datamodule), run.results / "samples.png",
                    f"{name} after {len(history.history)} epochs: validation samples")
    quality = evaluate_colour_quality(module, datamodule)  # the final model, whatever the last epoch logged
    save_colour_figures(quality, run.results, f"{name} after {len(history.history)} epochs")
    rebalance = {"lambda": module.hparams.rebalance, "class_weights": module.class_weights.tolist(),
                 "smoothed_distribution": module.colour_prior.tolist()} if rebalanced else None
    best_loss, best_epoch = history.best("val/loss", "min")
    best_acc, best_acc_epoch = history.best("val/acc", "max")
    return dict(
        model=name, hyperparameters=dict(module.hparams), batch_size=args.batch_size, seed=args.seed,
        best_val_loss=best_loss, best_val_loss_epoch=best_epoch,
        best_val_acc=best_acc, best_val_acc_epoch=best_acc_epoch,
        final_val_loss=history.last("val/loss"), final_val_acc=history.last("val/acc"),
        final_train_loss=history.last("train/loss"), final_train_acc=history.last("train/acc"),
        loss="rebalanced cross-entropy" if rebalanced else "cross-entropy", rebalance=rebalance,
        colour_quality=quality, data=datamodule.source)


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
                                weight_decay=args.weight_decay, rebalance=args.rebalance)
    return Prepared(module, datamodule, run_settings(TASK, args, module.hparams, data_settings(datamodule)))


def train(args, prepared=None):
    """Train one model as the flags say; returns the summary dict (global rank 0) or None."""
    prepared = prepared or prepare(args)
    rebalanced = args.rebalance is not None
    return run_task(TASK, args, prepared, prefix=args.model, mode="min",
                    monitor="val/loss_weighted" if rebalanced else "val/loss",  # the loss being minimised
                    callbacks=[validation_grid(), custom_scalars(TASK, rebalanced=rebalanced)], results=partial(write_results, prepared.module, prepared.datamodule,
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


def unit_float(text):
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


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
    m.add_argument("--rebalance", type=unit_float, default=None, metavar="LAMBDA",
                   help="class rebalancing of the loss (Zhang et al. 2016, eq. 3-4): weight each pixel by its "
                        "target colour's ((1-LAMBDA) p + LAMBDA/24)^-1, p = smoothed colour distribution of the "
                        "training pixels; 1 = plain CE, 0.5 = the paper's (default: off, the homework's plain CE)")
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
