"""float32 against bfloat16 autocast, in one process: one colourisation training step (eager, or compiled
with --compile) and the frozen segmentation trunk's forward pass (eager).

    python benchmarks/precision.py                    # UNet and PoolUpsampleNet, batch 100; resnet50 b16 128 px
    python benchmarks/precision.py --threads 1        # as each of the report's parallel runs trains
    python benchmarks/precision.py --threads 1 --compile   # the colourisation steps torch.compile'd, as by default

Why: CPUs with AMX-BF16 (Intel Sapphire Rapids and later) run bfloat16 convolutions in hardware, and the
package already takes `--precision bf16-mixed` (a Lightning Trainer flag; for segmentation also the
feature pass). This measures what that buys before anyone makes it a default; it changes the numbers,
so unlike --compile it is a setting that splits runs. Both sides start from the same weights and batch
and alternate call by call, so load from other processes hits both alike; figures are medians of
--repeats calls after two uncounted calls each (with --compile they hold the compile warm-up, not
reported). The last line printed is one JSON object.
"""
import argparse
import copy
import functools

from common import begin, elapsed, machine, median, now, print_json, print_table

import torch  # noqa: E402  (after common put the repo on sys.path)
import torch.nn.functional as F  # noqa: E402

from models.deeplabv3 import BACKBONES, build_deeplabv3  # noqa: E402
from models.registry import build_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["UNet", "PoolUpsampleNet"], help="colourisation nets")
    p.add_argument("--batch-size", type=int, default=100, help="colourisation batch (32x32 images)")
    p.add_argument("--backbone", default="resnet50", choices=list(BACKBONES), help="segmentation trunk")
    p.add_argument("--size", type=int, default=128, help="trunk image side in pixels")
    p.add_argument("--trunk-batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="measured calls per precision")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the colourisation nets (not the trunk)")
    return p.parse_args(argv)


def alternate(sides, device, repeats):
    """{name: median seconds} of calling each side in turn, after two uncounted calls each."""
    times = {name: [] for name in sides}
    for fn in [*sides.values()] * 2:
        fn()
    for _ in range(repeats):
        for name, fn in sides.items():
            start = now(device)
            fn()
            times[name].append(elapsed(start, now(device))[0])
    return {name: median(t) for name, t in times.items()}


def train_step(net, optimiser, grey, target, device, bf16):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(net(grey), target)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def main(argv=None):
    args = parse_args(argv)
    device = begin(args)
    g = torch.Generator().manual_seed(0)
    rows, results = [], []
    for name in args.models:
        net = build_model(name, kernel=3, num_in_channels=1, num_filters=32, num_colours=24).to(device)
        nets = {"fp32": net, "bf16": copy.deepcopy(net)}
        if args.compile:
            for n in nets.values():
                n.compile()
        optimisers = {k: torch.optim.AdamW(n.parameters(), 1e-3) for k, n in nets.items()}
        grey = torch.randn(args.batch_size, 1, 32, 32, generator=g).to(device)
        target = torch.randint(0, 24, (args.batch_size, 32, 32), generator=g).to(device)
        t = alternate({k: functools.partial(train_step, nets[k], optimisers[k], grey, target, device, k == "bf16")
                       for k in nets}, device, args.repeats)
        results.append({"what": f"{name} train step", "fp32_s": round(t["fp32"], 4), "bf16_s": round(t["bf16"], 4),
                        "speedup": round(t["fp32"] / t["bf16"], 3)})
    trunk = build_deeplabv3(args.backbone, weights="none").eval().to(device)
    x = torch.randn(args.trunk_batch_size, 3, args.size, args.size, generator=g).to(device)

    def features(bf16):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return trunk.features(x)

    t = alternate({"fp32": lambda: features(False), "bf16": lambda: features(True)}, device, args.repeats)
    full, half = features(False), features(True).float()
    relative = ((full - half).norm() / full.norm()).item()
    results.append({"what": f"{args.backbone} trunk forward", "fp32_s": round(t["fp32"], 4),
                    "bf16_s": round(t["bf16"], 4), "speedup": round(t["fp32"] / t["bf16"], 3),
                    "relative_feature_error": relative})
    for r in results:
        rows.append([r["what"], f"{r['fp32_s']:.3f}", f"{r['bf16_s']:.3f}", f"{r['speedup']:.2f}x"])
    print(f"float32 vs bfloat16 autocast: colourisation batch {args.batch_size} at 32 px; trunk batch "
          f"{args.trunk_batch_size} at {args.size} px; medians of {args.repeats} calls; colourisation nets "
          f"{'compiled' if args.compile else 'eager'}, trunk eager")
    print_table(["what", "fp32 s", "bf16 s", "bf16 speed-up"], rows)
    print(f"trunk features in bf16 differ from fp32 by {relative:.2%} (relative L2)")
    print_json({"benchmark": "precision", "compile": args.compile, "results": results, "machine": machine(device)})


if __name__ == "__main__":
    main()
