"""The frozen-feature cache: segmentation.py's training with and without it, in one process.

    python benchmarks/segmentation.py              # ResNet-101, 224 px, 848 images, 10 epochs
    python benchmarks/segmentation.py --quick      # mobilenet_v3_large, 136 images: a few minutes

Data: a fixture of Oxford17's size written in the real on-disk format by tests/fixtures/oxford17.py
(848 image/trimap pairs, 256x256, synthetic pixels; split 50/25/25 stratified by class as for the
real copy without datasplits.mat), or --data-dir. Weights: none (random frozen network; speed does
not depend on the values). Both sides are real training runs: SegmentationModule + Oxford17 on
the Trainer the CLI builds (training/trainer.py, plus its validation_grid callback),
CE loss, batch 16, --epochs epochs.

- cached (the default): the trunk's features are computed once in `on_fit_start` (the "cache pass"),
  then every epoch trains and validates the 1x1 head on them. The whole run is measured.
- uncached (`--no-feature-cache`): the full network runs every step. With ResNet-101 on a CPU a
  10-epoch run takes about an hour, so by default this side is MEASURED on the first
  --uncached-batches training batches and --uncached-val-batches validation batches of an epoch
  (after one warm-up epoch of the same size) and EXTRAPOLATED per image to the full epoch and run;
  the output says so. --quick (or --full-uncached) measures the uncached run completely instead.

Epoch times run from one `on_train_epoch_start` to the next (the last to `on_train_end`); the first
cached epoch also includes the cache pass and the sanity check, i.e. it runs from the start of
`trainer.fit`. Targets (CPU, ResNet-101 at 224): later epochs >= 50x faster with the cache, the whole
10-epoch run >= 8x faster (the limit is about 10x: one forward pass per image instead of ten).
The last line printed is one JSON object with every figure.
"""
import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import elapsed, machine, median, now, print_json, print_table, quiet, setup_device

import pytorch_lightning as pl  # noqa: E402  (after common put the repo on sys.path)
import torch  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

from data.oxford17 import Oxford17  # noqa: E402
from segmentation import SegmentationModule, validation_grid  # noqa: E402
from training.callbacks import ChannelsLast  # noqa: E402
from training.runs import create_run  # noqa: E402
from training.task import build_trainer  # noqa: E402

EPOCH_TARGET, RUN_TARGET = 50.0, 8.0
CLASSES = 17


class Timeline(Callback):
    """Device-synchronised host times of the fit's milestones."""

    def __init__(self, device):
        self.device = device
        self.fit_start = self.sanity_start = self.end = None
        self.starts, self.val_starts = [], []

    def on_fit_start(self, trainer, pl_module):  # before the module's on_fit_start (the cache pass)
        self.fit_start = now(self.device)

    def on_sanity_check_start(self, trainer, pl_module):
        self.sanity_start = now(self.device)

    def on_train_epoch_start(self, trainer, pl_module):
        self.starts.append(now(self.device))

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_starts.append(now(self.device))

    def on_train_end(self, trainer, pl_module):
        self.end = now(self.device)

    def epochs(self):
        """[{wall, cpu, train_wall, val_wall}] per epoch."""
        out = []
        for a, v, b in zip(self.starts, self.val_starts, self.starts[1:] + [self.end]):
            wall, cpu = elapsed(a, b)
            out.append({"wall": wall, "cpu": cpu, "train_wall": elapsed(a, v)[0], "val_wall": elapsed(v, b)[0]})
        return out


def write_fixture(root, n_images, size=256):
    """Oxford17-format tree with `n_images` image/trimap pairs over the 17 classes (no datasplits.mat)."""
    from tests.fixtures.oxford17 import write_oxford17

    per_class = math.ceil(n_images / CLASSES)
    write_oxford17(root, n_classes=CLASSES, per_class=per_class, size=(size, size), with_splits=False)
    trimaps = sorted((Path(root) / "trimaps").glob("image_*.png"))
    for extra in trimaps[n_images:]:  # e.g. 850 written, 848 kept, like the official trimaps.tgz
        extra.unlink()
    return Path(root)


def fit(args, data_dir, device, work, cached, epochs, limits=None):
    """One trainer.fit as the CLI runs it; (Timeline, fit wall seconds, datamodule)."""
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(loss="ce", backbone=args.backbone, weights=None, lr=1e-3,
                                image_size=args.image_size, feature_cache=cached)
    dm = Oxford17(data_dir=data_dir, image_size=args.image_size, batch_size=args.batch_size, download=False,
                  seed=0, mean=module.model.mean, std=module.model.std)
    dm.prepare_data()
    dm.setup("fit")
    run = create_run("segmentation", "bench", work / "results", work / "logs")
    timeline = Timeline(device)
    flags = dict(accelerator=args.accelerator, devices=1, precision=args.precision)
    trainer, _, _ = build_trainer(run, epochs, "val/miou", "max", flags,
                                  callbacks=[validation_grid(), ChannelsLast(args.channels_last), timeline],
                                  **(limits or {}))
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bar writes to stdout
        trainer.fit(module, datamodule=dm)
    return timeline, time.perf_counter() - start, dm


def measure_cached(args, data_dir, device, work):
    timeline, run_s, dm = fit(args, data_dir, device, work, cached=True, epochs=args.epochs)
    epochs = timeline.epochs()
    first = elapsed(timeline.fit_start, timeline.starts[1] if len(timeline.starts) > 1 else timeline.end)[0]
    return {
        "run_s": run_s,
        "cache_pass_s": elapsed(timeline.fit_start, timeline.sanity_start)[0],
        "first_epoch_s": first,
        "later_epoch_s": median([e["wall"] for e in epochs[1:]]),
        "later_epoch_cpu_s": median([e["cpu"] for e in epochs[1:]]),
        "epochs": len(epochs),
        "n_train": len(dm.train_set), "n_val": len(dm.val_set), "n_test": len(dm.test_set),
        "feature_cache_bytes": dm.feature_cache_bytes,
        "feature_cache_location": dm.feature_cache_location,
    }


def measure_uncached(args, data_dir, device, work, n_train, n_val):
    """Full-network epochs: measured completely, or on a few batches and extrapolated per image."""
    if args.full_uncached:
        timeline, run_s, _ = fit(args, data_dir, device, work, cached=False, epochs=args.epochs)
        walls = [e["wall"] for e in timeline.epochs()]
        return {"extrapolated": False, "epoch_s": median(walls[1:] or walls), "run_s": run_s}
    k, j = args.uncached_batches, args.uncached_val_batches
    limits = dict(limit_train_batches=k, limit_val_batches=j, num_sanity_val_steps=0)
    timeline, _, _ = fit(args, data_dir, device, work, cached=False, epochs=2, limits=limits)
    last = timeline.epochs()[-1]  # the first of the two epochs warms up
    train_imgs, val_imgs = min(k * args.batch_size, n_train), min(j * args.batch_size, n_val)
    per_train, per_val = last["train_wall"] / train_imgs, last["val_wall"] / val_imgs
    epoch_s = per_train * n_train + per_val * n_val
    sanity_s = per_val * min(2 * args.batch_size, n_val)  # Lightning's 2-batch sanity check before training
    return {"extrapolated": True, "epoch_s": epoch_s, "run_s": sanity_s + args.epochs * epoch_s,
            "measured_train_images": train_imgs, "measured_val_images": val_imgs,
            "train_s_per_image": per_train, "val_s_per_image": per_val}


def split_sizes(args, data_dir):
    """(train, val) image counts of the split the runs use."""
    dm = Oxford17(data_dir=data_dir, image_size=args.image_size, download=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    return len(dm.train_set), len(dm.val_set)


def average_rounds(before, after, epochs):
    """The mean of two extrapolated uncached measurements (per-image times averaged)."""
    out = dict(after)
    for key in ("train_s_per_image", "val_s_per_image", "epoch_s", "run_s"):
        out[key] = (before[key] + after[key]) / 2
    out["rounds_epoch_s"] = [before["epoch_s"], after["epoch_s"]]
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="mobilenet_v3_large, 136 images, the uncached run measured completely")
    p.add_argument("--backbone", default=None, help="resnet101 (mobilenet_v3_large with --quick)")
    p.add_argument("--images", type=int, default=None, help="image/trimap pairs in the fixture (848; 136 with --quick)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", default=None, help="an Oxford17 folder to use instead of the synthetic fixture")
    p.add_argument("--full-uncached", action="store_true", help="measure the uncached run completely (slow)")
    p.add_argument("--uncached-batches", type=int, default=3, help="training batches measured per uncached epoch")
    p.add_argument("--uncached-val-batches", type=int, default=1, help="validation batches measured per uncached epoch")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last model (default: as the CLI, on for CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None, help="where runs and the fixture go (default: a temporary folder)")
    args = p.parse_args(argv)
    args.backbone = args.backbone or ("mobilenet_v3_large" if args.quick else "resnet101")
    args.images = args.images or (136 if args.quick else 848)
    args.full_uncached = args.full_uncached or args.quick
    return args


def main(argv=None):
    quiet()
    args = parse_args(argv)
    device = setup_device(args)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        if args.data_dir:
            data_dir, data_kind = Path(args.data_dir), f"real ({args.data_dir})"
        else:
            data_dir = write_fixture(work / "oxford17", args.images)
            data_kind = f"synthetic fixture (tests/fixtures/oxford17.py), {args.images} pairs of 256x256"
        n_train, n_val = split_sizes(args, data_dir)
        # the extrapolated uncached side is timed before AND after the cached run, so that a change in
        # the machine's load during the (long) cached run biases neither side
        before = None if args.full_uncached else measure_uncached(args, data_dir, device, work, n_train, n_val)
        cached = measure_cached(args, data_dir, device, work)
        uncached = measure_uncached(args, data_dir, device, work, n_train, n_val)
        if before is not None:
            uncached = average_rounds(before, uncached, args.epochs)
    epoch_speedup = uncached["epoch_s"] / cached["later_epoch_s"]
    run_speedup = uncached["run_s"] / cached["run_s"]
    report(args, device, data_kind, cached, uncached, epoch_speedup, run_speedup)


def report(args, device, data_kind, cached, uncached, epoch_speedup, run_speedup):
    facts = machine(device)
    how = "EXTRAPOLATED" if uncached["extrapolated"] else "measured"
    print(f"\nsegmentation: feature cache vs --no-feature-cache, DeepLabV3-{args.backbone}, {args.image_size} px, "
          f"batch {args.batch_size}, {args.epochs} epochs, CE loss, weights none, precision {args.precision}")
    print(f"data: {data_kind}; split train {cached['n_train']} / val {cached['n_val']} / test {cached['n_test']}")
    print(f"machine: {facts['cpu']}, {facts['cpu_count']} cores, {facts['torch_threads']} torch threads"
          f"{', ' + facts['gpu'] if 'gpu' in facts else ''}\n")
    rows = [["cached (measured)", f"{cached['first_epoch_s']:.1f}", f"{cached['later_epoch_s']:.2f}", f"{cached['run_s']:.1f}"],
            [f"uncached ({how})", f"{uncached['epoch_s']:.1f}", f"{uncached['epoch_s']:.1f}", f"{uncached['run_s']:.1f}"],
            ["speed-up", "", f"{epoch_speedup:.1f}x", f"{run_speedup:.1f}x"]]
    print_table(["", "first epoch s", "later epochs s", f"{args.epochs}-epoch run s"], rows)
    print(f"\ncache pass (one forward over train + val): {cached['cache_pass_s']:.1f} s; feature cache: "
          f"{cached['feature_cache_bytes'] / 2**20:.0f} MiB in {cached['feature_cache_location']}")
    if uncached["extrapolated"]:
        print(f"uncached figures are EXTRAPOLATED, not measured: the full network was timed on "
              f"{uncached['measured_train_images']} training and {uncached['measured_val_images']} validation images "
              f"per epoch ({uncached['train_s_per_image']:.3f} s and {uncached['val_s_per_image']:.3f} s per image) "
              f"and scaled to {cached['n_train']} + {cached['n_val']} images per epoch, x{args.epochs} epochs; "
              f"mean of a measurement before and one after the cached run (epoch "
              f"{' and '.join(f'{e:.0f} s' for e in uncached.get('rounds_epoch_s', [uncached['epoch_s']]))})")
    met_epoch, met_run = epoch_speedup >= EPOCH_TARGET, run_speedup >= RUN_TARGET
    print(f"targets: later epochs >= {EPOCH_TARGET:.0f}x: {'met' if met_epoch else 'MISSED'} ({epoch_speedup:.1f}x); "
          f"whole run >= {RUN_TARGET:.0f}x: {'met' if met_run else 'MISSED'} ({run_speedup:.1f}x)"
          f"{' (targets are set for ResNet-101 at 224 on CPU)' if args.backbone != 'resnet101' else ''}")
    r = lambda d: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}  # noqa: E731
    print_json({"benchmark": "segmentation", "quick": args.quick, "backbone": args.backbone,
                "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
                "precision": args.precision, "channels_last": args.channels_last, "data": data_kind,
                "machine": facts, "cached": r(cached), "uncached": r(uncached),
                "epoch_speedup": round(epoch_speedup, 2), "run_speedup": round(run_speedup, 2),
                "targets": {"epoch": EPOCH_TARGET, "run": RUN_TARGET, "epoch_met": met_epoch, "run_met": met_run}})


if __name__ == "__main__":
    main()
