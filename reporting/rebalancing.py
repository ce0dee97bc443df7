"""Report section: UNet with the homework's plain cross-entropy vs UNet with class rebalancing
(`--rebalance 0.5`, color/rebalance.py), both with the report's colourisation settings and seeds.

The numbers are the ones each run recorded (summary.json `colour_quality`: its final weights on every
validation image); `rebalancing_figure` draws sample images with the two nets it is given, and
`rebalance_section` writes the text, its comparisons made by reporting/claims.py.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from files import atomic_save_figure  # noqa: E402
from reporting import claims  # noqa: E402
from reporting.colorization import swatches  # noqa: E402
from reporting.decodings import decode  # noqa: E402
from reporting.figures import save_image_rows  # noqa: E402
from reporting.markdown import table  # noqa: E402

RAREST = 3  # colours in the table's recall column


@torch.no_grad()
def rebalancing_figure(plain, rebalanced, sample, palette, temperature, lam, path):
    """grey | plain CE argmax | rebalanced argmax | rebalanced annealed mean | truth, for `sample` (grey, _, rgb)."""
    grey, _, rgb = sample
    a, b = plain(grey), rebalanced(grey)
    rows = [("greyscale input", grey), ("homework CE\nargmax", decode(a, palette, "argmax")),
            (f"rebalanced {lam:g}\nargmax", decode(b, palette, "argmax")),
            (f"rebalanced {lam:g}\nannealed mean", decode(b, palette, "annealed", temperature)), ("true image", rgb)]
    save_image_rows(rows, path, f"UNet: plain CE vs rebalanced (lambda = {lam:g}), validation images")
    return path


def recall_figure(qualities, title, path):
    """Recall per palette colour of each run ({label: colour_quality}), colours ordered by target share."""
    first = next(iter(qualities.values()))
    order = claims.commonest(first, len(first["target_share"]))
    colours = np.clip(np.array(first["palette"]), 0, 1)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(qualities)
    for i, (label, q) in enumerate(qualities.items()):
        values = [100 * (q["recall"][c] or 0) for c in order]
        ax.bar(np.arange(len(order)) + (i - (len(qualities) - 1) / 2) * width, values, width, label=label)
    ax.set_ylabel("recall (%)")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    swatches(ax, colours, order)
    ax.set_xlabel("palette colour, commonest first")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
    return path


def _row(label, s):
    q = s["colour_quality"]
    rare = claims.rarest(q, RAREST)
    return [f"{label} (`{s['run']}`)", s["seed"], f"{s['final_val_loss']:.4f}", claims.pct(q["accuracy"]),
            f"{q['colourfulness_pred']:.1f} / {q['colourfulness_true']:.1f} = {q['colourfulness_ratio']:.2f}",
            f"{q['mae_rgb_argmax']:.2f}", claims.pct(q["mean_recall"]),
            " / ".join(claims.pct(q["recall"][c]) for c in rare)]


def rebalance_section(plain, rebalanced, lam, train_images, figures):
    """Markdown of the section: `plain` and `rebalanced` are the UNet summaries, one per seed."""
    lines = [f"## Extra: class rebalancing (`--rebalance {lam:g}`)", "",
             "*Beyond the homework: does weighting rare colours up make the predictions more colourful?*", ""]
    rare = claims.rarest(plain[0]["colour_quality"], RAREST)
    rows = [_row("plain cross-entropy", s) for s in plain] + [_row(f"rebalanced, lambda = {lam:g}", s)
                                                             for s in rebalanced]
    headers = ["UNet run", "seed", "val CE (plain)", "val pixel acc", "colourfulness pred / true = ratio",
               "abs RGB error (0-255)", "mean recall (all colours)", f"recall of colours {' / '.join(map(str, rare))}"]
    weights = rebalanced[0].get("rebalance") or {}
    w = weights.get("class_weights") or [1.0]

    def values(runs, key):
        return [s["colour_quality"][key] for s in runs]

    lines += [
        f"The homework's cross-entropy treats every pixel alike, so the common, dull colours win. Zhang, Isola and "
        f"Efros (2016, eq. 3-4) weight each pixel by its target colour, w ~ ((1 - lambda) p~ + lambda / Q)^-1 with "
        f"E_p~[w] = 1, p~ the smoothed palette-colour distribution of the {train_images} training images' pixels, "
        f"Q = {len(w) if len(w) > 1 else 'the palette size'}. With lambda = {lam:g} the colour weights range from "
        f"{min(w):.2f} to {max(w):.2f}. Both kinds of run: UNet, {plain[0]['epochs']} epoch(s), batch "
        f"{plain[0]['batch_size']}; the numbers are each run's final weights on all validation images (summary.json "
        "`colour_quality`).", "",
        table(headers, rows), "",
        "- " + claims.compare(f"rebalanced (lambda {lam:g})", values(rebalanced, "colourfulness_ratio"), "plain CE",
                              values(plain, "colourfulness_ratio"), "colourfulness ratio (prediction / truth)", 2),
        "- " + claims.compare(f"rebalanced (lambda {lam:g})", values(rebalanced, "mean_recall"), "plain CE",
                              values(plain, "mean_recall"), "mean recall over the colours", 3),
        "- " + claims.compare(f"rebalanced (lambda {lam:g})", values(rebalanced, "accuracy"), "plain CE",
                              values(plain, "accuracy"), "pixel accuracy", 3),
        "- " + claims.compare(f"rebalanced (lambda {lam:g})", [s["final_val_loss"] for s in rebalanced], "plain CE",
                              [s["final_val_loss"] for s in plain], "plain validation cross-entropy", 3), ""]
    for name in ("rebalancing.png", "rebalancing_recall.png"):
        link = figures.link_if(name)
        if link:
            lines += [f"![{name[:-4].replace('_', ' ')}]({link})", ""]
    return "\n".join(lines)
