"""The frozen DeepLabV3 trunk's features in NCHW against channels-last (what models/deeplabv3.py keeps), in one process.

    python benchmarks/trunk_layout.py                       # resnet50, batch 16 at 128 px: the report's runs
    python benchmarks/trunk_layout.py --backbone resnet101 --size 224 --threads 1

Both sides are the same random trunk (--weights none computes exactly what the COCO weights do), on the
same batch; the two layouts alternate call by call, so that load from other processes hits both alike.
Figures are medians of --repeats calls after one uncounted call each. The last line printed is one JSON
object with every figure, the largest feature difference among them.
"""
import argparse

from common import begin, elapsed, machine, median, now, print_json, print_table

import torch  # noqa: E402  (after common put the repo on sys.path)

from models.deeplabv3 import BACKBONES, build_deeplabv3  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="resnet50", choices=list(BACKBONES))
    p.add_argument("--size", type=int, default=128, help="square image side in pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="measured calls per layout")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = begin(args)
    # the same random trunk twice (built from one seed), as segmentation.py's --channels-last and --no-channels-last
    fast = build_deeplabv3(args.backbone, weights="none").eval().to(device)
    plain = build_deeplabv3(args.backbone, weights="none", channels_last=False).eval().to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    times = {"nchw": [], "channels_last": []}
    with torch.no_grad():
        difference = (fast.features(x) - plain.features(x)).abs().max().item()  # also the uncounted first calls
        for _ in range(args.repeats):
            for name, model in (("nchw", plain), ("channels_last", fast)):
                start = now(device)
                model.features(x)
                times[name].append(elapsed(start, now(device))[0])
    nchw, cl = median(times["nchw"]), median(times["channels_last"])
    res = {"benchmark": "trunk_layout", "backbone": args.backbone, "size": args.size, "batch_size": args.batch_size,
           "nchw_s": round(nchw, 4), "channels_last_s": round(cl, 4), "speedup": round(nchw / cl, 3),
           "max_feature_difference": difference, "machine": machine(device)}
    print(f"frozen {args.backbone} trunk, batch {args.batch_size} at {args.size} px, medians of {args.repeats} calls")
    print_table(["layout", "s per batch"], [["NCHW", f"{nchw:.3f}"], ["channels-last", f"{cl:.3f}"]])
    print(f"channels-last is {nchw / cl:.2f}x as fast; largest feature difference {difference:.2e}")
    print_json(res)


if __name__ == "__main__":
    main()
