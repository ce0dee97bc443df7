"""Every comparative sentence of REPORT.md, made from the measured numbers: change a number, the sentence follows.

Each function takes plain numbers (or lists of them, one per seed) and returns a sentence. Nothing here
reads files or runs a model, so a test can feed invented values and check that flipping their order flips
the words. The rule for "measurable" is stated in the sentences: with two or more seeds a difference
counts when it exceeds the sum of the two standard deviations (sample standard deviation over seeds);
with one seed the spread is not measured, and the sentence says so instead of calling the difference.
"""
import math

# ----------------------------------------------------------------------------- numbers

def mean_std(values):
    """(mean, sample standard deviation or None for fewer than two values) of a non-empty list."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def pct(x, digits=1):
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def seeds_text(n):
    return f"{n} seed" + ("" if n == 1 else "s")


def mean_text(values, digits=3):
    """'1.234 ± 0.010 (3 seeds)', or '1.234' for one value."""
    mean, std = mean_std(values)
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({seeds_text(len(values))})"


def sentence(text):
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------- comparisons

def difference(a_values, b_values):
    """{"diff": mean(a) - mean(b), "spread": sum of the standard deviations or None, "measurable": bool or None}.
    measurable is None when a side has one value (no spread measured)."""
    (ma, sa), (mb, sb) = mean_std(a_values), mean_std(b_values)
    diff = ma - mb
    if sa is None or sb is None:
        return {"diff": diff, "spread": None, "measurable": None}
    return {"diff": diff, "spread": sa + sb, "measurable": abs(diff) > sa + sb}


def compare(name_a, a_values, name_b, b_values, what, digits=3, low="lower", high="higher"):
    """One sentence comparing `what` of A and B (one value per seed each): which is lower, by how much,
    and whether that exceeds the seed-to-seed spread. Differences that vanish at `digits` decimals are ties."""
    d = difference(a_values, b_values)
    values = f"{mean_text(a_values, digits)} vs {mean_text(b_values, digits)}"
    if d["measurable"] is False:
        return (f"No measurable difference in {what} between {name_a} and {name_b}: {values}; the difference "
                f"{abs(d['diff']):.{digits}f} is within the seed-to-seed spread (sum of the standard deviations, "
                f"{d['spread']:.{digits}f}).")
    if abs(d["diff"]) < 0.5 * 10 ** -digits:
        return sentence(f"{name_a} and {name_b} reach the same {what} to {digits} decimals: {values}.")
    word = low if d["diff"] < 0 else high
    head = sentence(f"{name_a} reaches a {word} {what} than {name_b}: {values}")
    if d["measurable"]:
        return (f"{head}; the difference {abs(d['diff']):.{digits}f} exceeds the seed-to-seed spread (sum of the "
                f"standard deviations, {d['spread']:.{digits}f}).")
    return f"{head}; one seed each, so whether this exceeds the seed-to-seed spread is not measured here."


def versus(name_a, a, name_b, b, what, digits=3):
    """'A has a lower/higher/the same `what` as B (a vs b)' for two single numbers."""
    if abs(a - b) < 0.5 * 10 ** -digits:
        return sentence(f"{name_a} has the same {what} as {name_b} to {digits} decimals ({a:.{digits}f}).")
    word = "lower" if a < b else "higher"
    return sentence(f"{name_a} has a {word} {what} than {name_b} ({a:.{digits}f} vs {b:.{digits}f}).")


def order_text(values, lower_first=True, digits=3):
    """'A (1.0) < B (1.2) < C (1.5)' from {name: value}, lowest first."""
    ranked = sorted(values, key=lambda k: values[k], reverse=not lower_first)
    sign = " < " if lower_first else " > "
    return sign.join(f"{k} ({values[k]:.{digits}f})" for k in ranked)


def trend(xs, ys):
    """'rises', 'falls' or 'does not change monotonically' for ys against increasing xs."""
    pairs = sorted(zip(xs, ys))
    steps = [b[1] - a[1] for a, b in zip(pairs, pairs[1:])]
    if steps and all(s > 0 for s in steps):
        return "rises"
    if steps and all(s < 0 for s in steps):
        return "falls"
    return "does not change monotonically"


# ----------------------------------------------------------------------------- curves

def epochs_to_reach(history, target, key="val/loss"):
    """The first epoch (from 1) whose `key` is at most `target`, or None when none is."""
    for row in history:
        if row.get(key) is not None and row[key] <= target:
            return row["epoch"]
    return None


def curve_comment(history, name, key="val/loss", train_key="train/loss", digits=3):
    """What a run's loss curves show: where validation loss was lowest, whether it was still falling at
    the end or rose after its minimum, and where training loss ended relative to it."""
    rows = [h for h in history if h.get(key) is not None]
    if not rows:
        return f"{name}: no validation loss recorded."
    last = rows[-1]
    best = min(rows, key=lambda h: h[key])
    if best["epoch"] == last["epoch"]:
        shape = (f"{name}'s validation loss was still falling at its last epoch ({last['epoch']}: "
                 f"{last[key]:.{digits}f}), so more epochs would likely lower it further")
    else:
        shape = (f"{name}'s validation loss was lowest at epoch {best['epoch']} ({best[key]:.{digits}f}) and ended "
                 f"{last[key] - best[key]:.{digits}f} higher at epoch {last['epoch']} ({last[key]:.{digits}f}): "
                 "past its minimum the model fits the training images better than it generalises")
    train = last.get(train_key)
    if train is None:
        return shape + "."
    side = "below" if train < last[key] else "above" if train > last[key] else "equal to"
    note = (" (the usual generalisation gap)" if side == "below" else
            " (training loss is averaged while the weights still change within the epoch)" if side == "above" else "")
    return f"{shape}; the training loss ended {side} it ({train:.{digits}f}){note}."


def steps_per_epoch(train_images, batch_size):
    return math.ceil(train_images / batch_size)


# ----------------------------------------------------------------------------- Q3 in 1.1, Q4 in 1.2

def doubling_claim(counts):
    """What doubling the input's width and height does, from {"HxW": {"weights", "outputs", "connections"}} at a
    size and at twice it (in that order)."""
    (small, a), (large, b) = list(counts.items())[:2]
    parts = []
    for key in ("weights", "outputs", "connections"):
        factor = b[key] / a[key]
        parts.append(f"the {key} {'stay the same' if factor == 1 else f'grow {factor:g}x'} ({a[key]} -> {b[key]})")
    return f"From {small} to {large}: " + ", ".join(parts) + "."


def padding_claim(rows):
    """Which output padding each kernel needs, from models.complexity.padding_table rows."""
    by_padding = {}
    for r in rows:
        by_padding.setdefault(r["output_padding"], []).append(r["kernel"])
    parts = [f"output padding {op} for kernel{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}"
             for op, ks in sorted(by_padding.items())]
    return ("To keep every shape, the transposed convolutions need " + "; ".join(parts) + ", and the padding of "
            "each kernel as in the table.")


# ----------------------------------------------------------------------------- Q2 in 1.1: does it look good?

def commonest(quality, k=3):
    """Indices of the k colours with the largest target share, commonest first."""
    shares = quality["target_share"]
    return sorted(range(len(shares)), key=lambda q: -shares[q])[:k]


def rarest(quality, k=3):
    """Indices of the k colours with the smallest non-zero target share, rarest first."""
    shares = quality["target_share"]
    return sorted([q for q in range(len(shares)) if shares[q] > 0], key=lambda q: shares[q])[:k]


def look_verdict(quality, k=3):
    """Do a run's predictions look good? The verdict and the three measurements behind it: colourfulness of the
    argmax predictions vs the truth, the share of pixels the k commonest colours take in predictions vs
    targets, and the recall of the k rarest colours."""
    ratio = quality["colourfulness_ratio"]
    common = commonest(quality, k)
    pred_common = sum(quality["pred_share"][q] for q in common)
    true_common = sum(quality["target_share"][q] for q in common)
    rare = rarest(quality, k)
    recalls = [quality["recall"][q] for q in rare]
    duller = ratio is not None and ratio < 1
    crowded = pred_common > true_common
    rare_text = ", ".join(f"colour {q}: {pct(r)}" for q, r in zip(rare, recalls))
    mean_rare = sum(r for r in recalls if r is not None) / max(1, len([r for r in recalls if r is not None]))
    rare_vs = ("below" if mean_rare < quality["mean_recall"] else "at or above") if quality["mean_recall"] else "n/a"
    facts = (f"the predictions are {'less' if duller else 'more' if ratio and ratio > 1 else 'as'} colourful than "
             f"the true images (Hasler-Suesstrunk colourfulness ratio {fmt(ratio, 2)}); the {k} commonest colours "
             f"take {pct(pred_common)} of the predicted pixels against {pct(true_common)} of the true ones "
             f"({'more' if crowded else 'not more'}); the {k} rarest colours are recalled at {rare_text} "
             f"({rare_vs} the mean recall over all colours, {pct(quality['mean_recall'])})")
    if duller and crowded:
        verdict = "No, not as colour images: the shapes and brightness are right (they come with the grey input), but"
    elif duller or crowded:
        verdict = "Partly:"
    else:
        verdict = "Yes, in colour as well:"
    return f"{verdict} {facts}."


# ----------------------------------------------------------------------------- skip connections: edges vs flat

def region_claim(base_name, base, skip_name, skip):
    """Where the skip connections help: {"edge": mae, "flat": mae} (RGB error, 0..255) for the model without
    and with them; the relative change on edge pixels vs flat pixels."""
    rel = {r: (skip[r] - base[r]) / base[r] for r in ("edge", "flat")}
    edge, flat = rel["edge"], rel["flat"]

    def change(x):
        return f"{abs(100 * x):.1f} % {'lower' if x < 0 else 'higher'}"

    head = (f"{skip_name}'s RGB error on edge pixels is {change(edge)} than {base_name}'s ({skip['edge']:.2f} vs "
            f"{base['edge']:.2f}), on flat pixels {change(flat)} ({skip['flat']:.2f} vs {base['flat']:.2f})")
    if helps_detail(base, skip):
        return f"{head}: the skip connections help most where the image has detail."
    if edge > flat:
        return f"{head}: here the skip connections help edges no more than flat regions."
    return f"{head}: the same change on both."


def helps_detail(base, skip):
    """Whether the error falls relatively more on edge pixels than on flat ones from `base` to `skip`."""
    return (skip["edge"] - base["edge"]) / base["edge"] < (skip["flat"] - base["flat"]) / base["flat"]


def reach_claim(target_name, target, runs):
    """How many epochs each run needs to reach `target` (the final validation loss of `target_name`):
    {name: epoch or None} -> a sentence."""
    parts = []
    for name, epoch in runs.items():
        parts.append(f"{name} after {epoch} epoch{'s' if epoch != 1 else ''}" if epoch is not None
                     else f"{name} never within its epochs")
    return f"Validation loss at or below {target_name}'s final {target:.3f}: " + ", ".join(parts) + "."


# ----------------------------------------------------------------------------- segmentation

def baseline_claim(name, values, baseline, digits=3):
    """A run's best val mIoU (one per seed) against the no-image baseline's val mIoU."""
    mean, std = mean_std(values)
    diff = mean - baseline
    where = "above" if diff > 0 else "below" if diff < 0 else "equal to"
    tail = ""
    if std is not None:
        tail = (f"; that margin {'exceeds' if abs(diff) > std else 'is within'} the seed-to-seed standard deviation "
                f"({std:.{digits}f})")
    return sentence(f"{name}: best val mIoU {mean_text(values, digits)}, {abs(diff):.{digits}f} {where} the no-image "
                    f"baseline ({baseline:.{digits}f}){tail}.")


def classes_claim(name, miou, flower):
    """Flower vs background IoU of a run (two classes: background IoU = 2 mIoU - flower IoU)."""
    background = 2 * miou - flower
    word = "better" if flower > background else "worse" if flower < background else "as well as"
    return sentence(f"{name} segments the flower {word}{' than' if word != 'as well as' else ''} the background "
                    f"(final val IoU {flower:.3f} vs {background:.3f}).")


def reference_claim(ours, reference, what, source):
    """Our value against a sourced reference value (protocols differ: said by the caller)."""
    if reference is None:
        return ""
    word = "lower than" if ours < reference else "higher than" if ours > reference else "the same as"
    return f"Our {what} {ours:.3f} is {word} the CSE 891 submission's {reference:g} [{source}]."
