"""Weights, outputs and connections of the conv layers (homework Q1.1.3) and the padding table
(homework Q1.2.4).

Counting conventions (per nn.Conv2d / nn.ConvTranspose2d call, found with forward hooks on the
real model):
- weights     = k*k*Cin*Cout (the conv kernel; biases are reported separately as Cout each);
- outputs     = Cout*Hout*Wout;
- connections = outputs * k*k*Cin: each output unit counted as connected to a full k x k x Cin
  window. For a transposed conv this is the same definition per output unit (its dense-equivalent
  cost; with stride 2 only about a quarter of those taps meet a real input value).
Zero padding counts as connections, as in the homework's closed form. BatchNorm parameters are not
conv weights: they are counted separately (`batchnorm_params`) and excluded from the totals.

Run `python -m models.complexity --help`.
"""

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.padding import padding_for
from models.registry import MODELS, build_model


@dataclass
class ConvRow:
    """One conv layer call: shapes and counts (see module docstring for the definitions)."""

    name: str
    kind: str  # "conv" or "conv_transpose"
    kernel: int | tuple[int, int]  # (kh, kw) only for non-square kernels
    stride: int
    in_channels: int
    out_channels: int
    output_shape: tuple[int, int, int]  # (Cout, Hout, Wout)
    weights: int
    biases: int
    outputs: int
    connections: int


def _row(name: str, module: nn.Module, output: torch.Tensor) -> ConvRow:
    kh, kw = module.kernel_size
    cin, cout = module.in_channels, module.out_channels
    outputs = output[0].numel()  # one image of the batch
    fan_in = kh * kw * cin // module.groups
    return ConvRow(
        name=name, kind="conv_transpose" if isinstance(module, nn.ConvTranspose2d) else "conv",
        kernel=kh if kh == kw else (kh, kw), stride=module.stride[0], in_channels=cin,
        out_channels=cout, output_shape=tuple(output.shape[1:]),
        weights=module.weight.numel(), biases=0 if module.bias is None else module.bias.numel(),
        outputs=outputs, connections=outputs * fan_in)


def count_conv_layers(model: nn.Module, input_size: Sequence[int] = (32, 32),
                      num_in_channels: int = 1) -> list[ConvRow]:
    """Run one zero image of size `input_size` (H, W) through `model` and return a ConvRow per
    nn.Conv2d / nn.ConvTranspose2d call, in call order. The model's train/eval mode is kept."""
    rows: list[ConvRow] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            hook = (lambda n: lambda mod, inp, out: rows.append(_row(n, mod, out)))(name)
            handles.append(module.register_forward_hook(hook))
    param = next(model.parameters(), None)
    x = torch.zeros(1, num_in_channels, *input_size,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    try:
        model.eval()  # BatchNorm must not update its running stats
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def totals(rows: Sequence[ConvRow]) -> dict[str, int]:
    """Sum weights, biases, outputs and connections over the rows."""
    return {key: sum(getattr(r, key) for r in rows)
            for key in ("weights", "biases", "outputs", "connections")}


def batchnorm_params(model: nn.Module) -> int:
    """Number of learnable BatchNorm parameters (scale and shift), not part of the conv totals."""
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for p in m.parameters())


# Closed form for PoolUpsampleNet. Conv output sizes: layer1 HxW (pool comes after the conv),
# layer2 H/2 x W/2, layer3 H/4 x W/4, layer4 H/2 x W/2, layer5 HxW; Cin -> Cout per layer:
# NIC->NF, NF->2NF, 2NF->NF, NF->NC, NC->NC. Integer arithmetic is exact since 4 | H and 4 | W.

POOL_UPSAMPLE_FORMULAS = {
    "weights": "k^2 (NIC*NF + 2*NF^2 + 2*NF^2 + NF*NC + NC^2) = k^2 (NIC*NF + 4*NF^2 + NF*NC + NC^2)",
    "biases": "NF + 2*NF + NF + NC + NC = 4*NF + 2*NC",
    "outputs": "H*W (NF + 2*NF/4 + NF/16 + NC/4 + NC) = H*W (25*NF/16 + 5*NC/4)",
    "connections": ("k^2 H*W (NIC*NF + NF*2*NF/4 + 2*NF*NF/16 + NF*NC/4 + NC*NC) "
                    "= k^2 H*W (NIC*NF + 5*NF^2/8 + NF*NC/4 + NC^2)"),
}


def pool_upsample_weights(nic: int, nf: int, nc: int, k: int) -> int:
    """Conv kernel weights of PoolUpsampleNet (no biases, no BatchNorm)."""
    return k * k * (nic * nf + 4 * nf * nf + nf * nc + nc * nc)


def pool_upsample_biases(nf: int, nc: int) -> int:
    """Conv biases of PoolUpsampleNet."""
    return 4 * nf + 2 * nc


def pool_upsample_outputs(nf: int, nc: int, h: int, w: int) -> int:
    """Conv output units of PoolUpsampleNet for one h x w image."""
    return h * w * (25 * nf + 20 * nc) // 16


def pool_upsample_connections(nic: int, nf: int, nc: int, k: int, h: int, w: int) -> int:
    """Conv connections of PoolUpsampleNet for one h x w image."""
    return k * k * h * w * (8 * nic * nf + 5 * nf * nf + 2 * nf * nc + 8 * nc * nc) // 8


def pool_upsample_closed_form(nic: int, nf: int, nc: int, k: int, h: int, w: int) -> dict[str, int]:
    """All PoolUpsampleNet closed-form totals, keyed like `totals`."""
    return {"weights": pool_upsample_weights(nic, nf, nc, k),
            "biases": pool_upsample_biases(nf, nc),
            "outputs": pool_upsample_outputs(nf, nc, h, w),
            "connections": pool_upsample_connections(nic, nf, nc, k, h, w)}


def complexity_report(name: str = "PoolUpsampleNet", *, kernel: int = 3, num_in_channels: int = 1,
                      num_filters: int = 32, num_colours: int = 24,
                      size: Sequence[int] = (32, 32)) -> dict:
    """Build model `name` and return a dict: model, params, size, rows (dicts), totals,
    batchnorm_params, and for PoolUpsampleNet also formulas, closed_form and `homework`: the
    weights/outputs/connections at `size` and at twice `size` (hook counts)."""
    params = dict(kernel=kernel, num_in_channels=num_in_channels, num_filters=num_filters,
                  num_colours=num_colours)
    model = build_model(name, **params)
    rows = count_conv_layers(model, size, num_in_channels)
    report = {"model": name, "params": params, "size": tuple(size),
              "rows": [asdict(r) for r in rows], "totals": totals(rows),
              "batchnorm_params": batchnorm_params(model)}
    if name == "PoolUpsampleNet":
        report["formulas"] = dict(POOL_UPSAMPLE_FORMULAS)
        report["closed_form"] = pool_upsample_closed_form(
            num_in_channels, num_filters, num_colours, kernel, *size)
        report["homework"] = {}
        for h, w in (tuple(size), (2 * size[0], 2 * size[1])):
            t = totals(count_conv_layers(model, (h, w), num_in_channels))
            report["homework"][f"{h}x{w}"] = {key: t[key] for key in ("weights", "outputs",
                                                                      "connections")}
    return report


def padding_table(kernels: Sequence[int] = (3, 4, 5)) -> list[dict]:
    """One dict per kernel: padding of the two strided convs, padding and output_padding of the
    two transposed convs, and (before, after) of the stride-1 convs, from `padding_for`."""
    return [{"kernel": k, **padding_for(k)._asdict()} for k in kernels]


def format_padding_table(table: Sequence[dict]) -> str:
    """A plain-text table of `padding_table`'s rows."""
    lines = [f"{'kernel':>6}  {'strided conv padding':>20}  {'transposed padding':>18}  "
             f"{'output_padding':>14}  {'stride-1 padding (before, after)':>32}",
             f"{'':>6}  {'(blocks 1-2)':>20}  {'(blocks 3-4)':>18}  {'(blocks 3-4)':>14}  "
             f"{'(all stride-1 convs)':>32}"]
    for r in table:
        lines.append(f"{r['kernel']:>6}  {r['conv']:>20}  {r['transpose']:>18}  "
                     f"{r['output_padding']:>14}  {str(tuple(r['same'])):>32}")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """A plain-text rendering of `complexity_report`'s dict."""
    p = report["params"]
    h, w = report["size"]
    out = [f"{report['model']}  kernel={p['kernel']} NIC={p['num_in_channels']} "
           f"NF={p['num_filters']} NC={p['num_colours']}  input {h}x{w}", ""]
    header = (f"{'layer':<14} {'kind':<15} {'k':>2} {'s':>2} {'Cin':>5} {'Cout':>5} "
              f"{'output':>14} {'weights':>10} {'biases':>7} {'outputs':>10} {'connections':>13}")
    out += [header, "-" * len(header)]
    for r in report["rows"]:
        shape = "x".join(str(d) for d in r["output_shape"])
        out.append(f"{r['name']:<14} {r['kind']:<15} {r['kernel']:>2} {r['stride']:>2} "
                   f"{r['in_channels']:>5} {r['out_channels']:>5} {shape:>14} {r['weights']:>10} "
                   f"{r['biases']:>7} {r['outputs']:>10} {r['connections']:>13}")
    t = report["totals"]
    out += ["-" * len(header),
            f"{'total':<14} {'':<15} {'':>2} {'':>2} {'':>5} {'':>5} {'':>14} {t['weights']:>10} "
            f"{t['biases']:>7} {t['outputs']:>10} {t['connections']:>13}",
            f"BatchNorm parameters (not in the totals): {report['batchnorm_params']}"]
    if "formulas" in report:
        out += ["", "Closed form (conv layers only; H, W multiples of 4):"]
        out += [f"  {key} = {formula}" for key, formula in report["formulas"].items()]
        out += ["", "Homework values (weights exclude biases):"]
        for size, values in report["homework"].items():
            out.append(f"  {size:>7}: " + ", ".join(f"{k} = {v}" for k, v in values.items()))
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.complexity",
        description="Count conv weights, outputs and connections of a colourisation model, or "
                    "print the padding table (homework Q1.1.3 and Q1.2.4).")
    parser.add_argument("model", nargs="?", choices=list(MODELS),
                        help="model to analyse (choices: %(choices)s)")
    parser.add_argument("--padding", action="store_true",
                        help="print the padding / output_padding table instead of a model")
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 4, 5], metavar="K",
                        help="kernel sizes for --padding (default: 3 4 5)")
    parser.add_argument("--kernel", type=int, default=3, help="conv kernel size k (default: 3)")
    parser.add_argument("--num-in-channels", type=int, default=1,
                        help="input channels NIC (default: 1, greyscale)")
    parser.add_argument("--num-filters", type=int, default=32,
                        help="filters NF of the first block (default: 32)")
    parser.add_argument("--num-colours", type=int, default=24,
                        help="colour classes NC (default: 24)")
    parser.add_argument("--size", type=int, nargs=2, default=[32, 32], metavar=("H", "W"),
                        help="input height and width, multiples of 4 (default: 32 32)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad arguments exit with code 2 via argparse."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.padding:
        try:
            print(format_padding_table(padding_table(args.kernels)))
        except ValueError as err:
            parser.error(str(err))
        return 0
    if args.model is None:
        parser.error(f"give a model ({', '.join(MODELS)}) or --padding")
    try:
        report = complexity_report(args.model, kernel=args.kernel,
                                   num_in_channels=args.num_in_channels,
                                   num_filters=args.num_filters, num_colours=args.num_colours,
                                   size=args.size)
    except ValueError as err:
        parser.error(str(err))
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
