"""One command that answers the homework's questions with numbers it measures: `results/REPORT.md`.

    python report.py            # the full report (2-2.5 h on 2 shared CPU cores; see README "Report")
    python report.py --quick    # a smoke run: 1 epoch per run, into .cache/report-quick/

It trains what is missing and reuses runs already finished with the same settings
(training/runs.py, `differences`), so an interrupted report resumes and a second call trains nothing:
- the three colorization models (homework defaults: 25 epochs, batch 100, kernel 3, NF 32);
- the batch-size sweep with ConvTransposeNet (colorization_sweep.py; 10 epochs by default);
- segmentation with CE and with the soft IoU loss: COCO-pretrained DeepLabV3-ResNet101 when its
  weights file is in the torch hub cache, else a pipeline check with a random frozen ResNet-50.
Then it writes REPORT.md with the Q1.1.3 / Q1.2.4 tables (models/complexity.py), the argmax vs
annealed decoding comparison (reporting/decodings.py) and the figures, copied into
RESULTS_DIR/report/ so that the report and its figures can be committed together.
"""
import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from errors import UsageError

REPO = Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / "shared" / "data"
COLOUR_MODELS = ("PoolUpsampleNet", "ConvTransposeNet", "UNet")
QUICK_ROOT = Path(".cache") / "report-quick"
# Published numbers for this exercise: 25 epochs, batch 100, kernel 3, NF 32 (val loss, val accuracy).
REFERENCE = {"PoolUpsampleNet": (1.585, 0.414), "ConvTransposeNet": (1.157, 0.547), "UNet": (1.051, 0.589)}
REFERENCE_SEGMENTATION = {"ce": 0.72, "iou": 0.74}  # best val mIoU, COCO DeepLabV3-ResNet101, 10 epochs


def default_data_dir(shared_name, fallback):
    """../shared/data/<name> when present (this workplace), else the CLIs' default folder."""
    shared = SHARED_DATA / shared_name
    return str(shared) if shared.is_dir() else fallback


def build_parser():
    from training.cli import HelpFormatter, positive_float, positive_int

    p = argparse.ArgumentParser(
        prog="report.py", formatter_class=HelpFormatter,
        description="Train what is missing, reuse finished runs, and write RESULTS_DIR/REPORT.md with figures.",
        epilog="example: python report.py --quick   (smoke run, ~20 min on 2 shared CPU cores)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 epoch per run, segmentation at 64 px, results in .cache/report-quick/ "
                        "(explicit flags still win)")
    f = p.add_argument_group("files")
    f.add_argument("--data-dir-cifar", default=default_data_dir("cifar10-horses", "datasets"),
                   help="CIFAR-10 folder (holds cifar-10-batches-py/ or the archive)")
    f.add_argument("--data-dir-oxford17", default=default_data_dir("oxford17", "datasets/oxford17"),
                   help="Oxford17 folder (holds jpg/, trimaps/ [, datasplits.mat] or the archives)")
    f.add_argument("--results-dir", default=None, help="runs, REPORT.md and report/ go here (default: results; "
                                                      "with --quick: .cache/report-quick/results)")
    f.add_argument("--logs-dir", default=None, help="TensorBoard logs and checkpoints (default: logs; "
                                                   "with --quick: .cache/report-quick/logs)")
    c = p.add_argument_group("colorization (homework defaults)")
    c.add_argument("--epochs", type=positive_int, default=None, help="epochs per model (default 25; --quick: 1)")
    c.add_argument("--batch-size", type=positive_int, default=100, help="batch size of the three model runs")
    c.add_argument("--kernel", type=positive_int, default=3, help="kernel size")
    c.add_argument("--num-filters", type=positive_int, default=32, help="NF")
    c.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
    c.add_argument("--seed", type=int, default=0, help="seed of every run")
    c.add_argument("--sweep-model", default="ConvTransposeNet", choices=COLOUR_MODELS, help="model of the sweep")
    c.add_argument("--sweep-batch-sizes", type=positive_int, nargs="+", default=[32, 64, 128, 256, 512],
                   metavar="B", help="batch sizes of the sweep (homework Q1.2.5)")
    c.add_argument("--sweep-epochs", type=positive_int, default=None,
                   help="epochs per sweep run (default 10, modest for a CPU; --quick: 1)")
    c.add_argument("--decode-model", default="UNet", choices=COLOUR_MODELS,
                   help="model whose decodings (argmax vs annealed mean) are compared")
    c.add_argument("--temperature", type=positive_float, default=0.38, help="annealed-mean temperature T")
    s = p.add_argument_group("segmentation")
    s.add_argument("--seg-weights", choices=("auto", "coco", "none"), default="auto",
                   help="auto: coco when its weights file is in the torch hub cache, else none")
    s.add_argument("--seg-backbone", default=None, choices=("resnet101", "resnet50", "mobilenet_v3_large"),
                   help="default: resnet101 with coco weights, resnet50 with none")
    s.add_argument("--seg-image-size", type=positive_int, default=None,
                   help="default: 224 with coco weights, 128 with none (--quick: 64)")
    s.add_argument("--seg-epochs", type=positive_int, default=None, help="epochs per loss (default 10; --quick: 1)")
    s.add_argument("--seg-batch-size", type=positive_int, default=16, help="batch size")
    s.add_argument("--seg-lr", type=positive_float, default=1e-3, help="learning rate")
    t = p.add_argument_group("other")
    t.add_argument("--accelerator", default="auto", help="Lightning accelerator of every run (cpu, gpu, auto)")
    t.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def parse_args(argv=None):
    """Parse the flags and fill the defaults that depend on --quick and on the weights found."""
    args = build_parser().parse_args(argv)
    quick = args.quick
    args.results_dir = args.results_dir or str(QUICK_ROOT / "results" if quick else "results")
    args.logs_dir = args.logs_dir or str(QUICK_ROOT / "logs" if quick else "logs")
    args.epochs = args.epochs or (1 if quick else 25)
    args.sweep_epochs = args.sweep_epochs or (1 if quick else 10)
    args.seg_epochs = args.seg_epochs or (1 if quick else 10)
    coco_file = coco_weights(args.seg_backbone or "resnet101")[0]
    if args.seg_weights == "auto":
        args.seg_weights = "coco" if coco_file.is_file() else "none"
    args.seg_backbone = args.seg_backbone or ("resnet101" if args.seg_weights == "coco" else "resnet50")
    args.seg_image_size = args.seg_image_size or (64 if quick else 224 if args.seg_weights == "coco" else 128)
    return args


def coco_weights(backbone):
    """(path in the torch hub cache, URL) of torchvision's COCO DeepLabV3 weights for `backbone`."""
    from models.deeplabv3 import BACKBONES

    url = BACKBONES[backbone][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


# ----------------------------------------------------------------------------- runs

def colour_args(args, model, batch_size=None, epochs=None, batch_sizes=None):
    """colorization.py's own parsed flags for one run (or a sweep) of the report."""
    from colorization import parse_args as colour_parse

    argv = [model, "--epochs", epochs or args.epochs, "--batch-size", batch_size or args.batch_size,
            "--kernel", args.kernel, "--num-filters", args.num_filters, "--lr", args.lr, "--seed", args.seed,
            "--data-dir", args.data_dir_cifar, "--results-dir", args.results_dir, "--logs-dir", args.logs_dir,
            "--accelerator", args.accelerator, "--devices", "1"]
    if batch_sizes:
        argv += ["--batch-sizes", *batch_sizes]
    return colour_parse([str(a) for a in argv])


def seg_args(args, loss):
    """segmentation.py's own parsed flags for one loss."""
    from segmentation import build_parser as seg_parser

    argv = ["--loss", loss, "--backbone", args.seg_backbone, "--weights", args.seg_weights,
            "--image-size", args.seg_image_size, "--epochs", args.seg_epochs, "--batch-size", args.seg_batch_size,
            "--lr", args.seg_lr, "--seed", args.seed, "--data-dir", args.data_dir_oxford17,
            "--results-dir", args.results_dir, "--logs-dir", args.logs_dir, "--accelerator", args.accelerator,
            "--devices", "1"]
    return seg_parser().parse_args([str(a) for a in argv])


def run_colour_models(args, log):
    from colorization import train_or_reuse

    runs = {}
    for model in COLOUR_MODELS:
        log(f"colorization {model}: {args.epochs} epoch(s), batch {args.batch_size}")
        runs[model] = train_or_reuse(colour_args(args, model), log)
    return runs


def run_segmentation(args, log):
    from segmentation import train_or_reuse

    runs = {}
    for loss in ("ce", "iou"):
        a = seg_args(args, loss)
        log(f"segmentation --loss {loss}: {a.backbone}, weights {a.weights}, {a.image_size} px, {a.epochs} epoch(s)")
        runs[loss] = train_or_reuse(a, log)
    return runs


def compare_decodings(args, summary, figure_path):
    """Metrics of both decodings for the run `summary` (its last checkpoint) on all validation
    images, and a figure of 8 of them. None when the checkpoint is gone."""
    from colorization import ColorizationModule
    from data.cifar import CIFARHorses
    from reporting.decodings import decoding_metrics, decoding_rows
    from training.checkpoints import load_module
    from training.figures import save_image_rows
    from training.runs import summary_checkpoint

    ckpt = summary_checkpoint(summary, "last", args.logs_dir)
    if ckpt is None:
        return None
    module = load_module(ColorizationModule, ckpt, "colorization").eval()
    dm = CIFARHorses(data_dir=args.data_dir_cifar, batch_size=args.batch_size)
    dm.setup()
    grey, target = dm.val_set.tensors
    metrics = decoding_metrics(module, grey, target, dm.val_rgb, dm.palette, args.temperature)
    g, _, rgb = dm.sample_batch(8)
    save_image_rows(decoding_rows(module, g, rgb, dm.palette, args.temperature), figure_path,
                    f"{summary['model']} after {summary['epochs']} epoch(s): argmax vs annealed mean "
                    f"(T = {args.temperature:g}), validation images")
    return {"metrics": metrics, "checkpoint": ckpt, "images": len(grey)}


def oxford_split(args):
    """(split source, counts per split) as segmentation.py makes them, reading only file names."""
    from data.oxford17 import Oxford17

    dm = Oxford17(data_dir=args.data_dir_oxford17, split=1, seed=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.prepare_data()
        splits = dm._make_split(dm._pair_numbers())  # the module's own rule, without decoding images
    return dm.split_source, {k: len(v) for k, v in splits.items()}


# ----------------------------------------------------------------------------- main

class Figures:
    """Copies run figures into RESULTS_DIR/report/ and removes the ones no longer used."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.used = set()

    def path(self, name):
        self.used.add(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / name

    def copy(self, source, name):
        """Copy `source` as report/<name>; returns the link relative to REPORT.md (None if absent)."""
        from training.files import atomic_write_bytes

        source = Path(source)
        if not source.is_file():
            return None
        atomic_write_bytes(self.path(name), source.read_bytes())
        return self.link(name)

    def link(self, name):
        return f"{self.folder.name}/{name}"

    def prune(self):
        for png in self.folder.glob("*.png"):
            if png.name not in self.used:
                png.unlink()


def make_report(args, log=print):
    """Train or reuse every run, then write RESULTS_DIR/REPORT.md; returns its path."""
    from colorization import render_samples, train_or_reuse
    from colorization_sweep import run_sweep
    from reporting.document import render
    from training.files import atomic_write_text, describe_machine

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("report.py trains its runs one after the other in one process (each on one device); "
                         "start it with python, not torchrun / srun")
    start = time.perf_counter()
    results = Path(args.results_dir)
    figures = Figures(results / "report")
    oxford = oxford_split(args)  # fails early, before hours of training, when Oxford17 is missing
    colour = run_colour_models(args, log)
    decode_summary = colour[args.decode_model][0]
    log(f"decodings: argmax vs annealed mean (T = {args.temperature:g}) with {args.decode_model}")
    decodings = compare_decodings(args, decode_summary, figures.path("decodings.png"))
    from reporting.rebalancing import compare_rebalancing  # issue 13: plain CE vs --rebalance 0.5
    rebalancing = compare_rebalancing(args, colour, figures, colour_args, log)
    sweep = run_sweep(colour_args(args, args.sweep_model, epochs=args.sweep_epochs,
                                  batch_sizes=args.sweep_batch_sizes), train_or_reuse, render_samples, log)
    seg = run_segmentation(args, log)
    ctx = {"args": args, "argv": sys.argv[1:], "machine": describe_machine(), "figures": figures,
           "colour": colour, "decodings": decodings, "decode_summary": decode_summary, "sweep": sweep, "seg": seg,
           "oxford_split": oxford, "coco": coco_weights("resnet101"), "reference": REFERENCE,
           "reference_seg": REFERENCE_SEGMENTATION, "repo": REPO,
           "wall_seconds": time.perf_counter() - start, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    ctx["rebalancing"] = rebalancing
    path = atomic_write_text(results / "REPORT.md", render(ctx))
    figures.prune()
    trained = sum(t for _, t in [*colour.values(), *seg.values()]) + sweep["trained"]
    log(f"report: {path} ({trained} runs trained now, {time.perf_counter() - start:.0f} s)")
    return path


def main(argv=None):
    from training.cli import quiet_known_warnings, run_main

    quiet_known_warnings()
    warnings.filterwarnings("ignore", message=r".*randomly initialised.*")
    return run_main(make_report, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
