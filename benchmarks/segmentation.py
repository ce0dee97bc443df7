"""The persistent feature store: segmentation.py's whole runs, first (store built) and second (store read).

    python benchmarks/segmentation.py              # ResNet-101, 224 px, real Oxford17, 10 epochs
    python benchmarks/segmentation.py --quick      # mobilenet_v3_large, 136 synthetic images: a few minutes

Data: `../shared/data/oxford17` when present (846 image/trimap pairs), else (and with --quick) a
synthetic fixture in the real on-disk format (tests/fixtures/oxford17.py), or --data-dir. Weights:
a stand-in COCO file (models/standin_weights.py: random values with the real file name, keys and
shapes, so the compute is that of the real weights) in a temporary TORCH_HOME, or --torch-home.

Two whole runs in one process, each `segmentation.prepare(config)` then `segmentation.train(config,
prepared)`, as `python segmentation.py` makes them (weights read, images decoded, the trunk's features
computed or read, fit, test with the best checkpoint, results written):
- first: --loss ce with an empty store: one trunk forward over every image of train, val and test,
  written to the store (its time: "features s", within prepare), then the epochs and the test split;
- second: --loss iou on the same store: no trunk forward at all.
Targets (2-core CPU, ResNet-101 at 224): the second run >= 15x faster than the first; both runs
together <= 1.15x one trunk pass. The last line printed is one JSON object with every figure.
"""
import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, begin, elapsed, machine, now, print_json, print_table


import segmentation  # noqa: E402  (after common put the repo on sys.path)
from segmentation import SegmentationConfig  # noqa: E402

SECOND_TARGET, BOTH_TARGET = 15.0, 1.15
CLASSES = 17


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
    """One whole run of segmentation.py with these flags; its times and numbers."""
    config = SegmentationConfig(loss=loss, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                                batch_size=args.batch_size, epochs=args.epochs, data_dir=str(data_dir),
                                results_dir=str(work / "results"), logs_dir=str(work / "logs"),
                                feature_store=str(store), accelerator=args.accelerator, devices=1,
                                precision=args.precision, channels_last=args.channels_last, progress_bar=False)
    timed = {}
    original = segmentation.trunk_features

    def trunk_features(*a, **k):  # the trunk pass (or the store read) inside prepare
        start = now(device)
        out = original(*a, **k)
        timed["features_s"] = elapsed(start, now(device))[0]
        return out

    start = now(device)
    segmentation.trunk_features = trunk_features
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress lines
            prepared = segmentation.prepare(config)
            fit_start = now(device)
            summary = segmentation.train(config, prepared)
    finally:
        segmentation.trunk_features = original
    end = now(device)
    counts = summary["data"]["counts"]
    out = {"label": label, "loss": loss, "run_s": elapsed(start, end)[0], "run_cpu_s": elapsed(start, end)[1],
           "prepare_s": elapsed(start, fit_start)[0], "features_s": timed["features_s"],
           "train_and_test_s": elapsed(fit_start, end)[0], "epochs": summary["epochs"],
           "n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"],
           "test_miou": summary["test_miou"], "store": summary["feature_store"]}
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {out['run_s']:.1f} s (prepare {out['prepare_s']:.1f}, of it "
          f"features {out['features_s']:.1f}; fit and test {out['train_and_test_s']:.1f})", file=sys.stderr, flush=True)
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
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last frozen trunk, as segmentation.py's default")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None,
                   help="where runs, the store and the fixture go (default: a temporary folder)")
    args = p.parse_args(argv)
    args.backbone = args.backbone or ("mobilenet_v3_large" if args.quick else "resnet101")
    real = SHARED_DATA / "oxford17"
    if args.data_dir is None and not args.quick and (real / "trimaps").is_dir():
        args.data_dir = str(real)
    if args.data_dir is None and not args.quick:
        args.images = 848
    return args


def main(argv=None):
    args = parse_args(argv)
    device = begin(args)
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
    rows = [[r["label"], r["loss"], f"{r['run_s']:.1f}", f"{r['prepare_s']:.1f}", f"{r['features_s']:.1f}",
             f"{r['train_and_test_s']:.1f}", f"{r['test_miou']:.4f}"] for r in runs.values()]
    print_table(["run", "loss", "run s", "prepare s", "features s", "fit + test s", "test mIoU"], rows)
    print(f"\nrows: first = store built (trunk over all {n} images, written to disk); second = the other loss, "
          f"store read (no trunk forward)")
    store = first["store"] or {}
    print(f"store: {store.get('bytes', 0) / 2**20:.0f} MiB; first run reused it: {store.get('reused')}, "
          f"second run reused it: {(second['store'] or {}).get('reused')}")
    met_speed, met_both = speedup >= SECOND_TARGET, both <= BOTH_TARGET
    print(f"targets: second run >= {SECOND_TARGET:.0f}x faster than the first: {'met' if met_speed else 'MISSED'} "
          f"({speedup:.1f}x); both losses <= {BOTH_TARGET}x one trunk pass ({trunk:.1f} s): "
          f"{'met' if met_both else 'MISSED'} ({both:.2f}x)")
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
