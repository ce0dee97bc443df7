"""Report section: UNet with the homework's plain cross-entropy vs UNet with class rebalancing
(`--rebalance 0.5`, color/rebalance.py), both with the report's colourisation settings (25 epochs).

`compare_rebalancing` trains the rebalanced run when no finished one matches (the homework run is the
report's own UNet run), evaluates both last checkpoints on all validation images with
color/metrics.py (a few seconds on a CPU) and draws two figures; `rebalance_section` writes the text.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reporting.markdown import table  # noqa: E402

LAMBDA = 0.5  # Zhang et al.'s value
RAREST = 3    # colours in the table's recall column
MODEL = "UNet"


def compare_rebalancing(args, colour_runs, figures, colour_args, log=print):
    """{homework, rebalanced: {summary, quality}, lambda, rarest, images} for REPORT.md, or
    {"missing": [...]} when a checkpoint is gone. Writes report/rebalancing.png and rebalancing_recall.png."""
    import torch

    from color.decode import decode
    from color.figures import recall_comparison_figure
    from color.metrics import colour_quality, rarest
    from colorization import ColorizationModule
    from colorization import train_or_reuse
    from data.cifar import CIFARHorses
    from training.figures import save_image_rows
    from training.files import atomic_save_figure
    from training.checkpoints import load_module
    from training.runs import summary_checkpoint

    a = colour_args(args, MODEL)
    a.rebalance = LAMBDA
    log(f"colorization {MODEL} --rebalance {LAMBDA:g}: {a.epochs} epoch(s), batch {a.batch_size}")
    rebalanced, trained = train_or_reuse(a, log)
    runs = {"homework": colour_runs[MODEL][0], "rebalanced": rebalanced}
    ckpts = {k: summary_checkpoint(s, "last", args.logs_dir) for k, s in runs.items()}
    missing = [s["run"] for k, s in runs.items() if ckpts[k] is None]
    if missing:
        return {"missing": missing, "run": (rebalanced, trained)}
    dm = CIFARHorses(data_dir=args.data_dir_cifar, batch_size=args.batch_size)
    dm.setup()
    grey, target = dm.val_set.tensors
    out = {"lambda": LAMBDA, "images": len(grey), "train_images": dm.source["train"], "run": (rebalanced, trained)}
    modules = {}
    for key, summary in runs.items():
        module = load_module(ColorizationModule, ckpts[key], "colorization").eval()
        modules[key] = module
        out[key] = {"summary": summary, "checkpoint": str(ckpts[key]),
                    "quality": colour_quality(module, grey, target, dm.val_rgb, dm.palette, args.temperature)}
    out["rarest"] = rarest(out["homework"]["quality"], RAREST)

    g, _, rgb = dm.sample_batch(8)
    with torch.no_grad():
        hw, rb = modules["homework"](g), modules["rebalanced"](g)
    rows = [("greyscale input", g), ("homework CE\nargmax", decode(hw, dm.palette, "argmax")),
            (f"rebalanced {LAMBDA:g}\nargmax", decode(rb, dm.palette, "argmax")),
            (f"rebalanced {LAMBDA:g}\nannealed mean", decode(rb, dm.palette, "annealed", args.temperature)),
            ("true image", rgb)]
    save_image_rows(rows, figures.path("rebalancing.png"),
                    f"{MODEL}, {runs['homework']['epochs']} epochs: plain CE vs rebalanced (lambda = {LAMBDA:g}), "
                    f"validation images")
    fig = recall_comparison_figure({"homework CE": out["homework"]["quality"],
                                    f"rebalanced {LAMBDA:g}": out["rebalanced"]["quality"]},
                                   f"{MODEL}: recall per palette colour on all {len(grey)} validation images")
    atomic_save_figure(fig, figures.path("rebalancing_recall.png"))
    plt.close(fig)
    return out


def extra_runs(ctx):
    """[(part, summary, trained now)] of the runs this section adds to the report's run count and table."""
    r = ctx.get("rebalancing")
    if not r or "run" not in r:
        return []
    summary, trained = r["run"]
    return [(f"colourisation, --rebalance {LAMBDA:g}", summary, trained)]


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _change(new, old, unit="", digits=3, scale=1.0):
    d = scale * (new - old)
    return f"{'+' if d >= 0 else '-'}{abs(d):.{digits}f}{unit}"


def rebalance_section(ctx):
    """Markdown of the section (empty when the report did not run the comparison)."""
    r = ctx.get("rebalancing")
    if not r:
        return ""
    lines = [f"## Beyond the homework: class rebalancing (`--rebalance {LAMBDA:g}`)", ""]
    if "missing" in r:
        return "\n".join(lines + [f"Not measured: the checkpoints of {', '.join(r['missing'])} are gone (logs/ removed)."])
    hw, rb = r["homework"], r["rebalanced"]
    qh, qr = hw["quality"], rb["quality"]
    rare = r["rarest"]
    share = ", ".join(f"{q} ({_pct(qh['target_share'][q])})" for q in rare)
    rows = []
    for label, run in (("homework: plain cross-entropy", hw), (f"rebalanced, lambda = {LAMBDA:g}", rb)):
        s, q = run["summary"], run["quality"]
        rows.append([f"{label} (`{s['run']}`)", f"{s['final_val_loss']:.4f}", _pct(q["accuracy"]),
                     f"{q['colourfulness_pred']:.1f} / {q['colourfulness_true']:.1f} = {q['colourfulness_ratio']:.2f}",
                     f"{q['mae_rgb_argmax']:.2f} / {q['mae_rgb_annealed']:.2f}", _pct(q["mean_recall"]),
                     " / ".join(_pct(q["recall"][c]) for c in rare)])
    headers = ["UNet run", "val CE (plain)", "val pixel acc", "colourfulness pred / true = ratio",
               "abs RGB error argmax / annealed", "mean recall (24 colours)", f"recall of colours {' / '.join(map(str, rare))}"]
    more, fewer = _gains(qh, qr)
    lines += [
        f"The homework's cross-entropy treats every pixel alike, and the common, dull colours win: Zhang, Isola and "
        f"Efros (2016) weight each pixel by its target colour instead, w ~ ((1 - lambda) p~ + lambda / Q)^-1 with "
        f"E_p~[w] = 1 (eq. 3-4), p~ the palette-colour distribution of the {r['train_images']} training "
        f"images' pixels, smoothed over the palette (color/rebalance.py), Q = 24. Both runs: UNet, "
        f"{hw['summary']['epochs']} epochs, batch {hw['summary']['batch_size']}, seed {hw['summary']['seed']}, "
        f"the same data; numbers on all {r['images']} validation images with each run's last checkpoint "
        f"(colour_quality in each summary.json holds all of them, per colour too).", "",
        table(headers, rows), "",
        f"Val CE is the plain, unweighted cross-entropy (comparable with the homework's numbers) for both runs. "
        f"Colourfulness: Hasler and Suesstrunk (2003) on RGB 0..255, mean over images, of the argmax-decoded "
        f"prediction and of the true image (in palette colours the true images score "
        f"{qh['colourfulness_target']:.1f}). The rarest colours are those with the smallest share of validation "
        f"target pixels: {share}. With lambda = {LAMBDA:g} the weights of the 24 colours range from "
        f"{min(rb['summary']['rebalance']['class_weights']):.2f} to {max(rb['summary']['rebalance']['class_weights']):.2f}: "
        f"this palette came from k-means on the horse pixels, so its colours are already far more even than "
        f"Zhang's 313 ab bins, and the reweighting is mild.", "",
        f"**What changed.** The colourfulness of the predictions went from {qh['colourfulness_pred']:.1f} to "
        f"{qr['colourfulness_pred']:.1f} (ratio to the truth {qh['colourfulness_ratio']:.2f} -> "
        f"{qr['colourfulness_ratio']:.2f}){_spread(hw['summary'], rb['summary'])}; the mean recall over the 24 colours changed by "
        f"{_change(qr['mean_recall'], qh['mean_recall'], ' points', 1, 100)}; "
        f"recall rose for {len(more)} colours and fell for {len(fewer)}. The recall of the rarest colours went "
        + ", ".join(f"{c}: {_pct(qh['recall'][c])} -> {_pct(qr['recall'][c])}" for c in rare) + ". "
        f"**What it cost.** Pixel accuracy {_pct(qh['accuracy'])} -> {_pct(qr['accuracy'])}, plain val CE "
        f"{hw['summary']['final_val_loss']:.4f} -> {rb['summary']['final_val_loss']:.4f}, mean absolute RGB error "
        f"(argmax) {qh['mae_rgb_argmax']:.2f} -> {qr['mae_rgb_argmax']:.2f}"
        + (": the common colours give up some pixels to the rarer ones, and a wrong vivid colour is likely further "
           "from the truth than a wrong dull one. " if qr["accuracy"] < qh["accuracy"] else ". ")
        + f"Wall time: {hw['summary']['wall_seconds']:.0f} s vs {rb['summary']['wall_seconds']:.0f} s.", "",
        f"![grey | homework argmax | rebalanced argmax | rebalanced annealed mean | truth]"
        f"({ctx['figures'].link('rebalancing.png')})", "",
        f"![recall per palette colour, both runs]({ctx['figures'].link('rebalancing_recall.png')})"]
    return "\n".join(lines)


def _spread(old, new, last=10):
    """', and over the last N epochs it ranged a-b (homework) vs c-d (rebalanced)' from the histories."""
    ranges = []
    for s in (old, new):
        values = [h["val/colourfulness_pred"] for h in s.get("history", []) if "val/colourfulness_pred" in h][-last:]
        if len(values) < 2:
            return ""
        ranges.append(f"{min(values):.1f}-{max(values):.1f}")
    n = min(last, len(old["history"]), len(new["history"]))
    return f"; over the last {n} epochs it ranged {ranges[0]} (homework) vs {ranges[1]} (rebalanced)"


def _gains(old, new):
    """(colours whose recall rose, colours whose recall fell) from `old` to `new`."""
    pairs = [(q, a, b) for q, (a, b) in enumerate(zip(old["recall"], new["recall"])) if a is not None and b is not None]
    return [q for q, a, b in pairs if b > a], [q for q, a, b in pairs if b < a]
