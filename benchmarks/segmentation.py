"""The persistent feature store: segmentation.py's whole runs, first (store built), second (read), before.

    python benchmarks/segmentation.py              # ResNet-101, 224 px, real Oxford17, 10 epochs
    python benchmarks/segmentation.py --quick      # mobilenet_v3_large, 136 synthetic images: a few minutes

Data: `../shared/data/oxford17` when present (846 image/trimap pairs), else (and with --quick) a
synthetic fixture in the real on-disk format (tests/fixtures/oxford17.py), or --data-dir. Weights:
a stand-in COCO file (models/standin_weights.py: random values with the real file name, keys and
shapes, so the compute is that of the real weights) in a temporary TORCH_HOME, or --torch-home.

Three whole runs, in one process, each as train() makes it (module with its weights file, data
decoded, Trainer with the CLI's callbacks, fit, test with the best checkpoint):
- first: --loss ce with an empty store: one trunk forward over every image of train, val and test,
  written to the store, then 10 epochs and the test split on stored features;
- second: --loss iou on the same store: no trunk forward at all;
- before: the behaviour before issue 12 (train/val features in memory for this run only, the test
  split through the full network); --skip-before leaves it out.
"features s" is the time from the Trainer's fit start to its sanity check: the module's
on_fit_start, i.e. the trunk pass (first, before) or reading the store (second). The trunk pass of
the first run is "one trunk pass over all images". Targets (2-core CPU, ResNet-101 at 224): the
second run >= 15x faster than the first; both runs together <= 1.15x that trunk pass.
The last line printed is one JSON object with every figure.
"""
import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, elapsed, machine, median, now, print_json, print_table, quiet, setup_device

import pytorch_lightning as pl  # noqa: E402  (after common put the repo on sys.path)
from pytorch_lightning import Callback  # noqa: E402

from data.oxford17 import Oxford17  # noqa: E402
from segmentation import SegmentationModule, validation_grid  # noqa: E402
from training.callbacks import ChannelsLast  # noqa: E402
from training.runs import create_run  # noqa: E402
from training.task import build_trainer  # noqa: E402

SECOND_TARGET, BOTH_TARGET = 15.0, 1.15
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


def one_run(args, data_dir, device, work, loss, store, label):
    """One whole run as segmentation.py's train() makes it: module (weights file read), data
    (decoded), fit, test with the best checkpoint. store: a folder (persistent store) or None (the
    behaviour before issue 12: train/val features in memory, test split through the full network)."""
    start = now(device)
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(loss=loss, backbone=args.backbone, weights=args.weights, lr=1e-3,
                                image_size=args.image_size, feature_cache=True, feature_store=store)
    dm = Oxford17(data_dir=data_dir, image_size=args.image_size, batch_size=args.batch_size, download=False,
                  seed=0, mean=module.model.mean, std=module.model.std)
    dm.prepare_data()
    dm.setup("fit")
    run = create_run("segmentation", label, work / "results", work / "logs")
    timeline = Timeline(device)
    flags = dict(accelerator=args.accelerator, devices=1, precision=args.precision)
    trainer, _, _ = build_trainer(run, args.epochs, "val/miou", "max", flags,
                                  callbacks=[validation_grid(), ChannelsLast(args.channels_last), timeline])
    fit_start = now(device)
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bar writes to stdout
        trainer.fit(module, datamodule=dm)
        test_start = now(device)
        test = trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False, weights_only=True)[0]
    end = now(device)
    epochs = timeline.epochs()
    out = {"label": label, "loss": loss, "run_s": elapsed(start, end)[0], "run_cpu_s": elapsed(start, end)[1],
           "setup_s": elapsed(start, fit_start)[0],
           "features_s": elapsed(timeline.fit_start, timeline.sanity_start)[0],
           "later_epoch_s": median([e["wall"] for e in epochs[1:]]),
           "test_s": elapsed(test_start, end)[0], "epochs": len(epochs),
           "n_train": len(dm.train_set), "n_val": len(dm.val_set), "n_test": len(dm.test_set),
           "test_miou": test.get("test/miou"), "store": dm.feature_store_info}
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {out['run_s']:.1f} s (setup {out['setup_s']:.1f}, features "
          f"{out['features_s']:.1f}, later epochs {out['later_epoch_s']:.2f} s each, test {out['test_s']:.1f})",
          file=sys.stderr, flush=True)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="mobilenet_v3_large, a synthetic fixture of 136 images: a few minutes")
    p.add_argument("--backbone", default=None, help="resnet101 (mobilenet_v3_large with --quick)")
    p.add_argument("--weights", default="coco", choices=("coco", "none"),
                   help="coco: a stand-in COCO weights file (random values, the real file name, keys, shapes "
                        "and compute) in a temporary TORCH_HOME, unless --torch-home is given")
    p.add_argument("--torch-home", default=None, help="use the weights file under this TORCH_HOME as it is")
    p.add_argument("--images", type=int, default=136, help="image/trimap pairs of the synthetic fixture (--quick "
                                                          "or when the real data is absent: 848)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", default=None,
                   help="Oxford17 folder (default: ../shared/data/oxford17 when present; --quick: the fixture)")
    p.add_argument("--skip-before", action="store_true", help="do not time the behaviour before issue 12")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last model (default: as the CLI, on for CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None, help="where runs, the store and the fixture go (default: a temporary folder)")
    args = p.parse_args(argv)
    args.backbone = args.backbone or ("mobilenet_v3_large" if args.quick else "resnet101")
    real = SHARED_DATA / "oxford17"
    if args.data_dir is None and not args.quick and (real / "trimaps").is_dir():
        args.data_dir = str(real)
    if args.data_dir is None and not args.quick:
        args.images = 848
    args.weights = None if args.weights == "none" else args.weights
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
        weights_kind = "random (--weights none)"
        if args.weights == "coco":
            if args.torch_home:
                os.environ["TORCH_HOME"] = args.torch_home
                weights_kind = f"the file under {args.torch_home}"
            else:
                from models.standin_weights import write_standin

                os.environ["TORCH_HOME"] = str(work / "torch")
                write_standin(args.backbone, work / "torch")
                weights_kind = "stand-in COCO file (random values, the real file's keys, shapes and compute)"
        store = work / "features"
        runs = {"first": one_run(args, data_dir, device, work, "ce", store, "first"),    # builds the store
                "second": one_run(args, data_dir, device, work, "iou", store, "second")}  # reads it
        if not args.skip_before:
            runs["before"] = one_run(args, data_dir, device, work, "ce", None, "before")
    report(args, device, data_kind, weights_kind, runs)


def report(args, device, data_kind, weights_kind, runs):
    facts = machine(device)
    first, second = runs["first"], runs["second"]
    trunk = first["features_s"]  # one trunk forward over every image of train, val and test
    speedup = first["run_s"] / second["run_s"]
    both = (first["run_s"] + second["run_s"]) / trunk
    n = first["n_train"] + first["n_val"] + first["n_test"]
    print(f"\nsegmentation: persistent feature store, DeepLabV3-{args.backbone}, {args.image_size} px, batch "
          f"{args.batch_size}, {args.epochs} epochs, precision {args.precision}, weights: {weights_kind}")
    print(f"data: {data_kind}; split train {first['n_train']} / val {first['n_val']} / test {first['n_test']}")
    print(f"machine: {facts['cpu']}, {facts['cpu_count']} cores, {facts['torch_threads']} torch threads"
          f"{', ' + facts['gpu'] if 'gpu' in facts else ''}; load average at the end {os.getloadavg()[0]:.1f}\n")
    rows = [[r["label"], r["loss"], f"{r['run_s']:.1f}", f"{r['setup_s']:.1f}", f"{r['features_s']:.1f}",
             f"{r['later_epoch_s']:.2f}", f"{r['test_s']:.1f}", f"{r['test_miou']:.4f}"] for r in runs.values()]
    print_table(["run", "loss", "run s", "setup s", "features s", "epoch s", "test s", "test mIoU"], rows)
    print(f"\nrows: first = store built (trunk over all {n} images, written to disk); second = the other loss, "
          f"store read (no trunk forward); before = the behaviour before issue 12 (train/val features in memory, "
          f"test split through the full network)")
    store = first["store"] or {}
    print(f"store: {store.get('bytes', 0) / 2**20:.0f} MiB; first run reused it: {store.get('reused')}, "
          f"second run reused it: {(second['store'] or {}).get('reused')}")
    met_speed, met_both = speedup >= SECOND_TARGET, both <= BOTH_TARGET
    print(f"targets: second run >= {SECOND_TARGET:.0f}x faster than the first: {'met' if met_speed else 'MISSED'} "
          f"({speedup:.1f}x); both losses <= {BOTH_TARGET}x one trunk pass ({trunk:.1f} s): "
          f"{'met' if met_both else 'MISSED'} ({both:.2f}x)"
          + ("" if "before" not in runs else f"; the first run vs before: {runs['before']['run_s'] / first['run_s']:.2f}x"))
    r = lambda d: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}  # noqa: E731
    print_json({"benchmark": "segmentation-store", "quick": args.quick, "backbone": args.backbone,
                "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
                "precision": args.precision, "data": data_kind, "weights": weights_kind, "machine": facts,
                "load_average": os.getloadavg(), "runs": {k: r(v) for k, v in runs.items()},
                "trunk_pass_s": round(trunk, 2), "second_speedup": round(speedup, 2),
                "both_losses_over_trunk": round(both, 3),
                "targets": {"second": SECOND_TARGET, "both": BOTH_TARGET, "second_met": met_speed,
                            "both_met": met_both}})


if __name__ == "__main__":
    main()
