"""The text of REPORT.md, rendered from what report.py measured (`render(ctx)`).

The sections follow the homework's submission list, each headed with its label (`Q2 in 1.1`, ...), the
question paraphrased in one line, then the answer. Every number comes from `ctx` (run summaries, the
sweep, the measurements of reporting/measures.py, the complexity counts of models/complexity.py), and
every comparison sentence from reporting/claims.py, so the words follow the numbers. The only numbers
not measured here are the sourced ones of reporting/references.py, in the column named after their source.

ctx: config (report.py's resolved ReportConfig), argv, date, wall_seconds, machine (this process's),
figures (`Figures`), colour {model: [summary per seed]}, rebalanced [summary per seed], sweep
(colorization_sweep.write_sweep's dict), seg {loss: [summary per seed]}, trained {"<task>/<run>": trained now},
measured (report.py `measure`), oxford_split (source, counts), coco (path, url, stand-in), params
{model: parameters}, repo, threads (per worker, or None when the runs ran in this process).
"""
import json
import math
import os
from pathlib import Path

from files import atomic_write_bytes
from reporting import claims, references
from reporting.claims import fmt, mean_std, mean_text, pct
from reporting.markdown import table
from reporting.rebalancing import rebalance_section

MODELS = ("PoolUpsampleNet", "ConvTransposeNet", "UNet")
LOSS_NAMES = {"ce": "cross-entropy", "iou": "soft IoU"}
SECTIONS = ("Q2 in 1.1", "Q3 in 1.1", "Q2 in 1.2", "Q3 in 1.2", "Q4 in 1.2", "Q5 in 1.2", "Q2 in 1.3", "Q3 in 1.3",
            "Q1 in 2.1", "Q2 in 2.1", "Q1 in 2.2", "Q2 in 2.2")


# ----------------------------------------------------------------------------- helpers

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
        source = Path(source)
        if not source.is_file():
            return None
        atomic_write_bytes(self.path(name), source.read_bytes())
        return self.link(name)

    def link(self, name):
        return f"{self.folder.name}/{name}"

    def link_if(self, name):
        """The link of a figure made for this report, or None when it was not made."""
        return self.link(name) if name in self.used and (self.folder / name).is_file() else None

    def prune(self):
        for png in self.folder.glob("*.png"):
            if png.name not in self.used:
                png.unlink()


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def secs(x):
    return "n/a" if x is None else f"{x:.0f}"


def rel(path, start):
    """`path` relative to `start` when both lie in the same parent folder (../shared/data from the checkout),
    else absolute."""
    path, start = Path(path).resolve(), Path(start).resolve()
    if not path.is_relative_to(start.parent):
        return str(path)
    return os.path.relpath(path, start)


def run_folder(ctx, summary):
    return Path(ctx["config"].results_dir) / summary["task"] / summary["run"]


def read_machine(folder):
    """The dict in `folder`/machine.json, or None when absent or unreadable."""
    try:
        return json.loads((Path(folder) / "machine.json").read_text())
    except (OSError, ValueError):
        return None


def machine_text(machine):
    """One line: 'AMD EPYC, 2 logical CPUs (torch: 1 thread), CPU only'."""
    if not machine:
        return "not recorded (no machine.json)"
    return (f"{machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical CPUs "
            f"(torch: {plural(machine.get('torch_threads', '?'), 'thread')}), {machine.get('accelerator', '?')}")


def question(label, title, asked):
    return [f"## {label}: {title}", "", f"*Asked (paraphrased): {asked}*", ""]


def values(runs, key):
    return [s[key] for s in runs]


WHAT = {"final_val_loss": "final validation loss", "final_val_acc": "final validation accuracy",
        "best_val_miou": "best validation mIoU", "test_miou": "test mIoU"}


def runs_compare(name_a, runs_a, name_b, runs_b, key):
    """claims.compare of `key` over two lists of summaries (one per seed)."""
    return claims.compare(name_a, values(runs_a, key), name_b, values(runs_b, key), WHAT[key])


def figure(ctx, summary, file, name, alt):
    link = ctx["figures"].copy(run_folder(ctx, summary) / file, name)
    return [f"![{alt}]({link})", ""] if link else [f"({file} of run `{summary['run']}` is missing)", ""]


def seeds_note(runs):
    return "" if len(runs) == 1 else f" (figures: the first seed, {runs[0]['seed']})"


def all_summaries(ctx):
    """[(part, summary)] of every run the report used, in the order of its sections."""
    parts = [("colourisation", s) for m in MODELS for s in ctx["colour"][m]]
    parts += [(f"colourisation, --rebalance {s['rebalance']['lambda']:g}", s) for s in ctx["rebalanced"]]
    parts += [("batch sweep", s) for s in ctx["sweep"]["summaries"]]
    parts += [("segmentation", s) for loss in ctx["seg"] for s in ctx["seg"][loss]]
    return parts


def render(ctx):
    """The whole REPORT.md as a string."""
    parts = [header(ctx), machine_and_data(ctx), "# Part 1: colourisation (CIFAR-10 horses)",
             q2_11(ctx), complexity_section(), q2_12(ctx), q3_12(ctx), padding_section(), q5_12(ctx), q2_13(ctx),
             q3_13(ctx), "# Part 2: segmentation (Oxford17 flowers, DeepLabV3 with only its last layer trained)",
             segmentation_setup(ctx), q1_21(ctx), predictions_section(ctx, "Q2 in 2.1", "ce"), q1_22(ctx),
             predictions_section(ctx, "Q2 in 2.2", "iou"), "# Beyond the homework", decoding_section(ctx),
             paper_metrics_section(ctx),
             rebalance_section(ctx["colour"]["UNet"], ctx["rebalanced"], ctx["rebalanced"][0]["rebalance"]["lambda"],
                               ctx["measured"]["train_images"], ctx["figures"]),
             baseline_section(ctx), references.section(), runs_section(ctx), reproduce_section(ctx)]
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"


# ----------------------------------------------------------------------------- header, machine, data

def header(ctx):
    config = ctx["config"]
    cmd = " ".join(["python report.py", *ctx["argv"]])
    trained = sum(ctx["trained"].values())
    total = len(ctx["trained"])
    lines = ["# Image-to-image CNNs: results report", ""]
    if config.quick:
        lines += [f"> **Smoke run (`--quick`)**: 1 epoch per run (segmentation at {config.seg_image_size} px). It "
                  "checks that every part of the pipeline runs; its numbers are NOT the homework's answers. Run "
                  "`python report.py` for those.", ""]
    reused = total - trained
    how = (f"{config.jobs} at a time, each in its own process with {plural(ctx['threads'], 'torch thread')}"
           if ctx.get("threads") else "one after the other in one process")
    default_seeds = "" if "--seeds" in " ".join(ctx["argv"]) else (
        " (the default on a CPU, where each run takes minutes; `--seeds 3` measures the seed-to-seed spread of "
        "Part 1 too)" if config.seeds == 1 else "")
    lines += [f"Generated by `{cmd}` on {ctx['date']}. **This invocation took {ctx['wall_seconds'] / 60:.1f} min** "
              f"(wall time measured by report.py from its start to writing this file) and **trained {trained} of the "
              f"{total} runs it uses**" + (f"; it reused the other {reused}, finished earlier with the same settings"
                                          if reused else "") + f". Runs: {how}.", "",
              f"Seeds: {plural(config.seeds, 'run')} per colourisation model{default_seeds}; "
              f"{plural(config.seg_seeds, 'run')} per segmentation loss. A comparison over several seeds counts as "
              "a difference only when it exceeds the sum of the two standard deviations; with one seed the report "
              "says that the spread is not measured. Every number below was measured by these runs or computed by "
              f"this command, except the column *{references.COLUMN}*, whose sources are under References."]
    return "\n".join(lines)


def machines(ctx):
    """{machine line: [run names]} over every run used, from each run's machine.json."""
    found = {}
    for _, s in all_summaries(ctx):
        found.setdefault(machine_text(read_machine(run_folder(ctx, s))), []).append(s["run"])
    return found


def machine_and_data(ctx):
    found = machines(ctx)
    total = sum(len(v) for v in found.values())
    if len(found) == 1:
        where = f"All {total} runs record the same machine: {next(iter(found))}."
    else:
        where = (f"**The runs do not all come from one machine**: their machine.json files name {len(found)} "
                 "different ones, so their times are not comparable: " +
                 "; ".join(f"{m} ({plural(len(runs), 'run')})" for m, runs in found.items()) + ".")
    summaries = [s for _, s in all_summaries(ctx)]
    versions = summaries[0].get("versions", {}) if summaries else {}
    total_s = sum(s.get("wall_seconds") or 0 for s in summaries)
    lines = ["## Machine and software", "",
             f"- This invocation ran on: {machine_text(ctx['machine'])}. {where}",
             f"- Training time of all runs used: {total_s / 60:.1f} min (sum of their wall times; with parallel "
             "runs, more than the invocation's wall time).",
             "- Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             "## Data", ""]
    return "\n".join(lines + cifar_lines(ctx) + oxford_lines(ctx))


def cifar_lines(ctx):
    data = ctx["colour"]["UNet"][0].get("data", {})
    repo = ctx["repo"]
    lines = [f"- **CIFAR-10 horses** (`{rel(data.get('folder', ''), repo)}`): train = the {data.get('train')} "
             f"horses (label 7) of `data_batch_1..5`, validation = the {data.get('val')} horses of `test_batch`. "
             f"Palette: {data.get('num_colours')} k-means colours (`{data.get('palette')}`)."]
    readme = Path(data.get("folder", "")).parent / "README.md"
    if data.get("official_md5"):
        lines.append("  The batch files match the official release's md5 sums.")
    elif readme.is_file() and "JPEG" in readme.read_text(errors="replace"):
        lines.append("  These are **not** the official files (md5 differs): the pixels were decoded from JPEG copies "
                     f"of CIFAR-10 (see `{rel(readme, repo)}`), so numbers can differ slightly from runs on the "
                     "official data.")
    else:
        lines.append("  These are **not** the official files: "
                     f"{', '.join(data.get('md5_mismatches') or ['some files'])} differ from the official md5 sums.")
    return lines


def oxford_lines(ctx):
    config, repo = ctx["config"], ctx["repo"]
    source, counts = ctx["oxford_split"]
    folder = Path(config.data_dir_oxford17)
    lines = [f"- **Oxford17 flowers** (`{rel(folder, repo)}`): the {sum(counts.values())} images that have a "
             f"trimap; split: {source} (train {counts['train']}, val {counts['val']}, test {counts['test']})."]
    if "generated" in source:
        lines.append("  There is no `datasplits.mat`, so the split is the generated one above, not the official "
                     "`trn1/val1/tst1`.")
    lines.append(f"  Images and masks are resized to {config.seg_image_size} px (masks with nearest neighbour); the "
                 "black unlabelled band of the trimaps is left out of loss and metric.")
    return lines


# ----------------------------------------------------------------------------- Part 1

def colour_curves(ctx, model):
    runs = ctx["colour"][model]
    s = runs[0]
    return (figure(ctx, s, "curves.png", f"colorization-{model}-curves.png",
                   f"{model}: loss, accuracy and colourfulness per epoch") +
            figure(ctx, s, "samples.png", f"colorization-{model}-samples.png",
                   f"{model}: validation samples, grey | prediction | truth"))


def run_line(ctx, model):
    runs, config = ctx["colour"][model], ctx["config"]
    s = runs[0]
    return (f"{model}: {plural(s['epochs'], 'epoch')}, batch {s['batch_size']}, kernel {config.kernel}, NF "
            f"{config.num_filters}, AdamW lr {config.lr:g}; {plural(len(runs), 'seed')} "
            f"({', '.join(str(r['seed']) for r in runs)}){seeds_note(runs)}. Final validation loss "
            f"{mean_text(values(runs, 'final_val_loss'))}, accuracy "
            f"{mean_text([100 * a for a in values(runs, 'final_val_acc')], 1)} %.")


def q2_11(ctx):
    s = ctx["colour"]["PoolUpsampleNet"][0]
    q = s["colour_quality"]
    lines = question("Q2 in 1.1", "PoolUpsampleNet, its curves, and whether the results look good",
                     "train PoolUpsampleNet and look at its curves and outputs: are the colourisations good, and "
                     "for what reasons?")
    chance = 1 / len(q["target_share"])
    top = claims.commonest(q)
    crowded = sum(q["pred_share"][c] for c in top) > sum(q["target_share"][c] for c in top)
    lines += [run_line(ctx, "PoolUpsampleNet"), "", *colour_curves(ctx, "PoolUpsampleNet"),
              f"**Answer.** {claims.look_verdict(q)}",
              "",
              "**Why.** A grey value fits many colours (the task is ill-posed), and for an uncertain pixel the "
              "cross-entropy is lowest when the net spreads its probability over the likely colours; the argmax "
              "then paints the single most frequent one, the dull browns and greys that horses, fields and sky "
              "share. " + ("The shares above show that pull towards the commonest colours. " if crowded else
                           "In this run the predictions do not over-use the commonest colours, so that pull is not "
                           "what limits them. ")
              + (f"Where the grey input is informative the net is right more often than chance: pixel accuracy "
                 f"{pct(s['final_val_acc'])}, {s['final_val_acc'] / chance:.1f}x the {pct(chance)} of a uniform guess "
                 f"over the {len(q['target_share'])} colours." if s["final_val_acc"] > chance else
                 f"Its pixel accuracy, {pct(s['final_val_acc'])}, is no better than the {pct(chance)} of a uniform "
                 "guess: it has not learned much yet."), "",
              claims.curve_comment(s["history"], "PoolUpsampleNet")]
    return "\n".join(lines)


def complexity_section():
    from models.complexity import complexity_report

    r = complexity_report("PoolUpsampleNet")
    p = r["params"]
    rows = [[x["name"], x["kind"], x["kernel"], x["stride"], x["in_channels"], x["out_channels"],
             "x".join(map(str, x["output_shape"])), x["weights"], x["biases"], x["outputs"], x["connections"]]
            for x in r["rows"]]
    t = r["totals"]
    rows.append(["**total**", "", "", "", "", "", "", t["weights"], t["biases"], t["outputs"], t["connections"]])
    hw = [[size, v["weights"], v["outputs"], v["connections"]] for size, v in r["homework"].items()]
    return "\n".join(question(
        "Q3 in 1.1", "weights, outputs and connections of PoolUpsampleNet",
        "count PoolUpsampleNet's weights, outputs and connections in terms of NIC, NF and NC, and again with the "
        "input's width and height doubled (six values).") + [
        f"Counted with forward hooks on the real model (`python -m models.complexity PoolUpsampleNet`): "
        f"kernel k = {p['kernel']}, NIC = {p['num_in_channels']}, NF = {p['num_filters']}, "
        f"NC = {p['num_colours']}, one {r['size'][0]}x{r['size'][1]} image. Weights = k*k*Cin*Cout (biases "
        "apart), outputs = Cout*Hout*Wout, connections = outputs * k*k*Cin (zero padding included). BatchNorm "
        f"has {r['batchnorm_params']} more parameters, not counted as conv weights.", "",
        table(["layer", "kind", "k", "stride", "Cin", "Cout", "output (C x H x W)", "weights", "biases", "outputs",
               "connections"], rows), "",
        "Closed form (H x W input, multiples of 4; `models/complexity.py`, checked against the hook counts "
        "by `tests/test_complexity.py`):", "",
        *[f"- {key} = `{formula}`" for key, formula in r["formulas"].items()], "",
        "The six values:", "",
        table(["input", "weights", "outputs", "connections"], hw), "",
        f"**Answer.** {claims.doubling_claim(r['homework'])} The weights depend only on the kernels and channels; "
        "every output, and each of its connections, is repeated at every position of the grid."])


def curves_question(ctx, label, model, asked_model):
    """The homework's "train MODEL and show its curves" item: the run, its figures, a generated comment."""
    lines = question(label, f"{model}, training and validation curves",
                     f"train {asked_model} (batch 100, kernel 3, at least 25 epochs) and show its training and "
                     "validation curves, with comments.")
    lines += [run_line(ctx, model), "", *colour_curves(ctx, model),
              f"**Comments.** {claims.curve_comment(ctx['colour'][model][0]['history'], model)}"]
    return "\n".join(lines)


def q2_12(ctx):
    return curves_question(ctx, "Q2 in 1.2", "ConvTransposeNet", "ConvTransposeNet")


def models_table(ctx):
    rows = []
    for model in MODELS:
        runs = ctx["colour"][model]
        best = runs[0]
        rows.append([model, len(runs), ctx["params"][model], mean_text(values(runs, "final_val_loss")),
                     mean_text([100 * a for a in values(runs, "final_val_acc")], 1),
                     f"{fmt(best['best_val_loss'])} ({best['best_val_loss_epoch']})",
                     mean_text(values(runs, "final_train_loss")), references.cell("val loss", model)])
    colours = len(ctx["colour"]["UNet"][0]["colour_quality"]["target_share"])
    rows.append([f"uniform guess (ln {colours})", "", "", fmt(math.log(colours)), f"{100 / colours:.1f}", "", "", ""])
    return table(["model", "seeds", "parameters", "final val loss", "final val acc (%)",
                  "best val loss (epoch), first seed", "final train loss", references.COLUMN], rows)


def epochs_below(a, b, key):
    """(epochs where run a's `key` is below run b's, epochs compared) over the epochs both recorded."""
    ha = {h["epoch"]: h.get(key) for h in a["history"]}
    hb = {h["epoch"]: h.get(key) for h in b["history"]}
    common = [e for e in ha if e in hb and ha[e] is not None and hb[e] is not None]
    return sum(ha[e] < hb[e] for e in common), len(common)


def q3_12(ctx):
    ctn, pun = ctx["colour"]["ConvTransposeNet"], ctx["colour"]["PoolUpsampleNet"]
    lines = question("Q3 in 1.2", "ConvTransposeNet against PoolUpsampleNet",
                     "compared with PoolUpsampleNet, does ConvTransposeNet reach a lower validation loss, and what "
                     "could explain it?")
    val_below, n = epochs_below(ctn[0], pun[0], "val/loss")
    train_below, _ = epochs_below(ctn[0], pun[0], "train/loss")
    fits = train_below > n / 2
    params = ctx["params"]
    lines += [models_table(ctx), "",
              f"**Answer.** {runs_compare('ConvTransposeNet', ctn, 'PoolUpsampleNet', pun, 'final_val_loss')} "
              f"{runs_compare('ConvTransposeNet', ctn, 'PoolUpsampleNet', pun, 'final_val_acc')} "
              f"In the curves (first seed) ConvTransposeNet's validation loss is below PoolUpsampleNet's in "
              f"{val_below} of {n} epochs, its training loss in {train_below} of {n}.", "",
              "**Why it might be.** ConvTransposeNet learns how to resample: its stride-2 convolutions choose what "
              "to keep when the resolution halves, and its transposed convolutions learn how to spread each value "
              "over the finer grid, where PoolUpsampleNet's max-pooling keeps the largest value of each 2x2 block "
              "and its nearest-neighbour upsampling copies one value into a block, both fixed. "
              + size_claim(params["ConvTransposeNet"], params["PoolUpsampleNet"]) + " "
              + ("The curves support this: the training loss is lower too in most epochs, so the learned resampling "
                 "fits the images better, not only generalises better." if fits else
                 "The curves do not show it in the training loss: ConvTransposeNet's training loss is not lower in "
                 "most epochs, so any gain here is in generalisation rather than fit."),
              "", order_vs_reference(ctx)]
    return "\n".join(lines)


def size_claim(ctn, pun):
    if ctn == pun:
        return f"Both nets have {ctn} parameters, so it is not a matter of size."
    more = "more" if ctn > pun else "fewer"
    return (f"ConvTransposeNet has {more} parameters ({ctn} vs {pun})"
            + (", so its size may contribute." if ctn > pun else ", so it is not a matter of size."))


def order_vs_reference(ctx):
    ours = {m: mean_std(values(ctx["colour"][m], "final_val_loss"))[0] for m in MODELS}
    ref = {m: references.number("val loss", m) for m in MODELS}
    same = sorted(ours, key=ours.get) == sorted(ref, key=ref.get)
    cited = ", ".join(f"{m} {references.cell('val loss', m)}" for m in MODELS)
    return (f"By final validation loss: {claims.order_text(ours)}; the CSE 891 submission's values ({cited}) put "
            f"them in {'the same' if same else 'a different'} order (its protocol differs: References).")


def padding_section():
    from models.complexity import padding_table

    found = padding_table((3, 4, 5))
    rows = [[r["kernel"], r["conv"], r["transpose"], r["output_padding"], str(tuple(r["same"]))] for r in found]
    return "\n".join(question(
        "Q4 in 1.2", "padding for kernels 4 and 5",
        "which padding (first two convolutions) and padding / output padding (transposed convolutions) keep every "
        "tensor's shape with a kernel of 4 or 5?") + [
        "From `models/padding.py` (`python -m models.complexity --padding`), the function every model uses; "
        "`tests/test_models.py` checks that the shapes stay as with kernel 3 for kernels 1..7. A stride-2 "
        "convolution halves H and W with padding floor((k - 1) / 2); the transposed one doubles them when "
        "2 * padding - output_padding = k - 2.", "",
        table(["kernel", "strided conv padding (blocks 1-2)", "transposed conv padding (blocks 3-4)",
               "output_padding (blocks 3-4)", "stride-1 conv padding (before, after)"], rows), "",
        f"**Answer.** {claims.padding_claim(found)}"])


def sweep_claims(rows):
    """The sentences of Q5 in 1.2 from the sweep's CSV rows (batch_size, epochs, steps, losses, quality)."""
    rows = sorted(rows, key=lambda r: r["batch_size"])
    bs = [r["batch_size"] for r in rows]
    out = []

    def series(key, digits=3, scale=1.0):
        return ", ".join(f"{scale * r[key]:.{digits}f} at {r['batch_size']}" for r in rows)

    val = claims.trend(bs, [r["final_val_loss"] for r in rows])
    out.append(f"With a fixed number of epochs the final validation loss {val} "
               f"with the batch size ({series('final_val_loss')}), and the final training loss "
               f"{claims.trend(bs, [r['final_train_loss'] for r in rows])} ({series('final_train_loss')}).")
    small, large = rows[0], rows[-1]
    if len(rows) > 1:
        out.append(f"The reason is the number of updates: batch {small['batch_size']} took {small['steps']} optimiser "
                   f"steps, batch {large['batch_size']} {large['steps']} "
                   f"({small['steps'] / large['steps']:.0f}x fewer), each an average over more images.")
    return out


def equal_steps_claim(summaries):
    """Validation loss of the largest batch after all its steps against the smallest batch's at the first
    epoch with at least as many steps (from the histories)."""
    summaries = sorted(summaries, key=lambda s: s["batch_size"])
    if len(summaries) < 2:
        return ""
    small, large = summaries[0], summaries[-1]
    per_small = claims.steps_per_epoch(small["data"]["train"], small["batch_size"])
    total_large = claims.steps_per_epoch(large["data"]["train"], large["batch_size"]) * large["epochs"]
    row = next((h for h in small["history"] if h["epoch"] * per_small >= total_large), small["history"][-1])
    a, b = large["final_val_loss"], row["val/loss"]
    word = "lower than" if a < b else "higher than" if a > b else "equal to"
    verdict = ("per update the larger batch does at least as well, so what it loses at a fixed number of epochs is "
               "mostly the updates it did not take" if a <= b else
               "even per update the larger batch is behind, so it is not only the number of updates")
    return (f"Against optimiser steps (middle panel of the figure): after its {total_large} steps batch "
            f"{large['batch_size']} reached a validation loss of {a:.3f}, {word} batch {small['batch_size']}'s "
            f"{b:.3f} after {row['epoch'] * per_small} steps (epoch {row['epoch']}): {verdict}.")


def q5_12(ctx):
    sweep, config = ctx["sweep"], ctx["config"]
    rows = sorted(sweep["rows"], key=lambda r: r["batch_size"])
    summaries = sweep["summaries"]
    lines = question("Q5 in 1.2", "the effect of the batch size",
                     "retrain ConvTransposeNet with several batch sizes for a fixed number of epochs: how does the "
                     "batch size change the training and validation loss and the look of the outputs?")
    train_n = summaries[0]["data"]["train"]
    table_rows = [[r["batch_size"], r["epochs"], claims.steps_per_epoch(train_n, r["batch_size"]), r["steps"],
                   fmt(r["final_train_loss"]), fmt(r["final_val_loss"]),
                   f"{fmt(r['best_val_loss'])} ({r['best_val_loss_epoch']})", fmt(r["colourfulness_ratio"], 2),
                   pct(r["mean_recall"]), secs(r["wall_seconds"]), references.cell("sweep val loss", r["batch_size"])]
                  for r in rows]
    bs = [r["batch_size"] for r in rows]
    ratio, recall = [r["colourfulness_ratio"] for r in rows], [r["mean_recall"] for r in rows]
    quality = (f"The image quality, measured on all validation images: the colourfulness ratio (prediction / truth) "
               f"{claims.trend(bs, ratio)} with the batch size ("
               + ", ".join(f"{x:.2f} at {b}" for b, x in zip(bs, ratio)) + ") and the mean recall over the colours "
               f"{claims.trend(bs, recall)} (" + ", ".join(f"{pct(x)} at {b}" for b, x in zip(bs, recall)) + ")")
    if len(rows) > 1:
        duller = ratio[-1] < ratio[0]
        quality += (f": after {plural(rows[0]['epochs'], 'epoch')}, batch {bs[-1]}'s images are "
                    f"{'duller' if duller else 'at least as colourful'} than batch {bs[0]}'s"
                    + (", closer to the grey-brown average colour, as the samples show." if duller else "."))
    else:
        quality += "."
    lines += [f"{config.sweep_model}, {plural(rows[0]['epochs'], 'epoch')} per batch size (a modest number for a "
              f"CPU; the models above ran {plural(config.epochs, 'epoch')}), seed {config.seed}, everything else as "
              "above. Files: "
              f"`{rel(sweep['csv'], config.results_dir)}` (all columns), `{rel(sweep['figure'], config.results_dir)}`.",
              "",
              table(["batch size", "epochs", "steps per epoch", "steps", "final train loss", "final val loss",
                     "best val loss (epoch)", "colourfulness ratio", "mean recall", "train s", references.COLUMN],
                    table_rows), "",
              "**Answer.** " + " ".join(sweep_claims(rows)), "", equal_steps_claim(summaries), "", quality, "",
              f"Training time per run {claims.trend(bs, [r['wall_seconds'] for r in rows])} with the batch size ("
              + ", ".join(f"{r['wall_seconds']:.0f} s at {r['batch_size']}" for r in rows) + ").", ""]
    link = ctx["figures"].copy(sweep["figure"], "batch_sweep-val_loss.png")
    if link:
        lines += [f"![validation loss against epochs and against optimiser steps, accuracy, per batch size]({link})",
                  ""]
    for b, path in sorted(sweep["samples"].items()):
        link = ctx["figures"].copy(path, f"batch_sweep-samples-bs{b:03d}.png")
        lines += [f"![batch size {b}: validation samples]({link})", ""]
    return "\n".join(lines)


def q2_13(ctx):
    return curves_question(ctx, "Q2 in 1.3", "UNet", "the UNet")


def mean_regions(measured, model):
    found = [r for r in measured["regions"].get(model, []) if r is not None]
    if not found:
        return None
    return {k: sum(r[k] for r in found) / len(found) for k in ("edge", "flat", "all")}


def q3_13(ctx):
    unet, ctn = ctx["colour"]["UNet"], ctx["colour"]["ConvTransposeNet"]
    measured = ctx["measured"]
    lines = question("Q3 in 1.3", "what the skip connections change",
                     "compared with the previous model, do skip connections improve the validation loss, the "
                     "accuracy and the outputs' look, and why might they help (at least two reasons)?")
    target = ctn[0]["final_val_loss"]
    reach = {"ConvTransposeNet": claims.epochs_to_reach(ctn[0]["history"], target),
             "UNet": claims.epochs_to_reach(unet[0]["history"], target)}
    base, skip = mean_regions(measured, "ConvTransposeNet"), mean_regions(measured, "UNet")
    lines += [f"**Answer.** {runs_compare('UNet', unet, 'ConvTransposeNet', ctn, 'final_val_loss')} "
              f"{runs_compare('UNet', unet, 'ConvTransposeNet', ctn, 'final_val_acc')}",
              ""]
    masks = measured.get("masks", {})
    if base and skip:
        lines += [f"**Qualitatively, measured.** Edge pixels: the {100 * masks['edge_share']:.0f} % of the "
                  f"{measured['images']} validation images' pixels with the strongest Sobel gradient of the grey input "
                  f"(magnitude >= {masks['edge_threshold']:.3f}); flat pixels: the {100 * masks['flat_share']:.0f} % "
                  f"with the weakest (<= {masks['flat_threshold']:.3f}); the same pixels for both nets. Mean absolute "
                  "RGB error of the argmax colours (0-255), each net's best weights (model.pt), mean over its seeds:",
                  "",
                  table(["model", "edge pixels", "flat pixels", "all pixels", "edge / flat"],
                        [[m, f"{r['edge']:.2f}", f"{r['flat']:.2f}", f"{r['all']:.2f}", f"{r['edge'] / r['flat']:.2f}"]
                         for m, r in (("ConvTransposeNet", base), ("UNet", skip))]), "",
                  claims.region_claim("ConvTransposeNet", base, "UNet", skip), ""]
    else:
        lines += ["(Edge vs flat errors not measured: the runs' weights are missing.)", ""]
    lines += [claims.reach_claim("ConvTransposeNet", target, reach) + " (first seed each.)", ""]
    detail = bool(base and skip) and claims.helps_detail(base, skip)
    faster = reach["UNet"] is not None and (reach["ConvTransposeNet"] is None
                                            or reach["UNet"] < reach["ConvTransposeNet"])
    lines += ["**Why skip connections might help.**", "",
              "1. *The last layers see the full-resolution input.* Two stride-2 layers keep a quarter of the rows and "
              "columns, so where exactly an edge lies is lost before the upsampling; the skips hand the grey input and "
              "the first layer's features to the last layers, which can put colour boundaries on the grey image's "
              "edges. " + ("Supported here: the error falls more on edge pixels than on flat ones." if detail else
                           "Not supported by this measurement: the error does not fall more on edge pixels than on "
                           "flat ones." if base and skip else "Not measured here."),
              "2. *Shorter paths for the gradient.* The loss reaches the first layers directly through the skips, "
              "which makes the net easier to optimise. " + (
                  f"Supported here: UNet reaches ConvTransposeNet's final validation loss after {reach['UNet']} "
                  f"epochs, ConvTransposeNet itself after {reach['ConvTransposeNet']}." if faster else
                  "Not supported by these runs: UNet does not reach ConvTransposeNet's final validation loss in "
                  "fewer epochs."), "",
              references_claims_colour(ctx)]
    return "\n".join(lines)


def references_claims_colour(ctx):
    parts = []
    for m in ("ConvTransposeNet", "UNet"):
        ours = mean_std(values(ctx["colour"][m], "final_val_loss"))[0]
        parts.append(claims.reference_claim(ours, references.number("val loss", m), f"{m} final validation loss",
                                            references.VALUES[("val loss", m)][1]))
    return " ".join(p for p in parts if p) + " (Different data copies and protocols: see Data and References.)"


# ----------------------------------------------------------------------------- Part 2

def segmentation_setup(ctx):
    config = ctx["config"]
    coco_file, coco_url, standin = ctx["coco"]
    lines = []
    if config.seg_weights != "coco":
        lines += [f"> **Pipeline check, not the homework's numbers.** The COCO-pretrained weights are not available "
                  f"here (no internet), so every run used a *randomly initialised* frozen DeepLabV3-"
                  f"{config.seg_backbone} (`--backbone {config.seg_backbone} --weights none --image-size "
                  f"{config.seg_image_size}`).", ">",
                  f"> What is missing for the real numbers: the weights file `{coco_file.name}` from {coco_url}, "
                  "placed in `$TORCH_HOME/hub/checkpoints/`. With it, `python report.py` uses ResNet-101 with COCO "
                  "weights at 224 px by itself.", ""]
    elif standin:
        lines += ["> **Stand-in weights.** The COCO weights file in the torch hub cache is a random stand-in "
                  "(models/standin_weights.py), so these numbers are a pipeline check.", ""]
    lines += [f"Only the new last layer (`classifier[4]`, 2*256+2 parameters) trains: "
              f"{plural(config.seg_epochs, 'epoch')}, batch {config.seg_batch_size}, Adam lr {config.seg_lr:g}, "
              f"{config.seg_image_size} px, "
              f"{plural(config.seg_seeds, 'seed')} per loss. mIoU: the mean of the flower and background IoU, "
              "accumulated over the whole split; the test split is scored once with each run's best-val checkpoint. "
              "*No image (baseline)*: one mask for every image (the mean training mask, thresholded), scored the same "
              "way: what position alone achieves."]
    return "\n".join(lines)


def seg_table(ctx, loss):
    runs = ctx["seg"][loss]
    base = runs[0]["baseline"]
    rows = [[LOSS_NAMES[loss], s["seed"], f"{fmt(s['best_val_miou'])} ({s['best_val_miou_epoch']})",
             fmt(s.get("final_val_iou_flower")), fmt(s.get("test_miou")), secs(s["wall_seconds"]),
             references.cell("best val mIoU", loss) if i == 0 else ""] for i, s in enumerate(runs)]
    if len(runs) > 1:
        rows.append([f"{LOSS_NAMES[loss]}, mean ± sd", "", mean_text(values(runs, "best_val_miou")),
                     mean_text(values(runs, "final_val_iou_flower")), mean_text(values(runs, "test_miou")), "", ""])
    rows.append(["no image (baseline)", "", fmt(base.get("val_miou")), fmt(base.get("val_iou_flower")),
                 fmt(base.get("test_miou")), "", ""])
    return table(["loss", "seed", "best val mIoU (epoch)", "final val flower IoU", "test mIoU", "train s",
                  references.COLUMN], rows)


def seg_curves(ctx, loss):
    s = ctx["seg"][loss][0]
    return figure(ctx, s, "curves.png", f"segmentation-{loss}-curves.png",
                  f"{LOSS_NAMES[loss]}: train and val loss, val mIoU per epoch, no-image baseline")


def random_trunk_note(ctx):
    if ctx["config"].seg_weights == "coco" and not ctx["coco"][2]:
        return ""
    return ("**What random trunk features allow one to conclude.** The frozen trunk here is random, so its features "
            "carry no learned notion of flowers. These runs show that the data, masks, feature store, both losses, "
            "mIoU and test scoring work, and how much a new last layer alone extracts from such features compared "
            "with the no-image baseline. They cannot show which loss is better on COCO features, nor how far from "
            "the homework's (or the CSE 891 submission's) mIoU we are.")


def q1_21(ctx):
    ce = ctx["seg"]["ce"]
    base = ce[0]["baseline"]["val_miou"]
    lines = question("Q1 in 2.1", "cross-entropy: curves and best validation mIoU",
                     "fine-tune only the replaced last layer of DeepLabV3 with cross-entropy: what is the best "
                     "validation mIoU, with curves and comments?")
    lines += [seg_table(ctx, "ce"), "",
              f"**Answer.** Best validation mIoU with cross-entropy: {mean_text(values(ce, 'best_val_miou'))}. "
              f"{claims.baseline_claim('Cross-entropy', values(ce, 'best_val_miou'), base)} "
              f"{claims.curve_comment(ce[0]['history'], 'The cross-entropy run (first seed)')}", "",
              random_trunk_note(ctx), "", *seg_curves(ctx, "ce")]
    return "\n".join(lines)


def predictions_section(ctx, label, loss):
    s = ctx["seg"][loss][0]
    lines = question(label, f"{LOSS_NAMES[loss]}: input, ground truth and prediction",
                     f"show validation images with their true and predicted masks ({LOSS_NAMES[loss]} run).")
    lines += [f"Rows: image, ground truth, prediction of run `{s['run']}` (seed {s['seed']}); white: flower, black: "
              "background, grey: the trimap's unlabelled band (left out of loss and metric). "
              + claims.classes_claim(f"The {LOSS_NAMES[loss]} run", s["final_val_miou"], s["final_val_iou_flower"]), "",
              *figure(ctx, s, "predictions.png", f"segmentation-{loss}-predictions.png",
                      f"{LOSS_NAMES[loss]}: validation images, image | truth | prediction")]
    return "\n".join(lines)


def q1_22(ctx):
    ce, iou = ctx["seg"]["ce"], ctx["seg"]["iou"]
    base = ce[0]["baseline"]["val_miou"]
    lines = question("Q1 in 2.2", "soft IoU loss: curves, best validation mIoU, and against cross-entropy",
                     "train with the soft IoU loss: what validation mIoU does it reach, and how does that compare "
                     "with cross-entropy?")
    lines += [seg_table(ctx, "iou"), "",
              f"**Answer.** {runs_compare('the soft IoU loss', iou, 'cross-entropy', ce, 'best_val_miou')} "
              f"Test split: {runs_compare('soft IoU', iou, 'cross-entropy', ce, 'test_miou')}",
              "",
              f"Against the no-image baseline: {claims.baseline_claim('soft IoU', values(iou, 'best_val_miou'), base)} "
              f"{claims.baseline_claim('Cross-entropy', values(ce, 'best_val_miou'), base)}", "",
              "The soft IoU loss optimises a relaxation of the flower IoU itself, image by image: every image counts "
              "the same whatever its flower's size, and background pixels matter only where they are predicted as "
              "flower; cross-entropy weighs every pixel alike. "
              + claims.curve_comment(iou[0]["history"], "The soft IoU run (first seed)"), "",
              random_trunk_note(ctx), "", *seg_curves(ctx, "iou")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- extras

def decoding_section(ctx):
    measured, config = ctx["measured"], ctx["config"]
    s = measured["decode_summary"]
    lines = ["## Extra: decoding the colour distribution, argmax vs annealed mean", "",
             "*Beyond the homework: does decoding the predicted distribution differently give better colours?*", ""]
    d = measured.get("decodings")
    if d is None:
        return "\n".join(lines + [f"Not measured: the weights of run `{s['run']}` are missing."])
    a, m = d["argmax"], d["annealed"]
    rows = [["argmax (the homework's)", pct(a["accuracy"]), f"{a['mae_rgb']:.2f}"],
            [f"annealed mean, T = {config.temperature:g}", pct(m["accuracy"]), f"{m['mae_rgb']:.2f}"]]
    lines += [f"{s['model']} (run `{s['run']}`, its best weights) on all {measured['images']} validation images. "
              "Annealed mean (Zhang, Isola and Efros, ECCV 2016): colour = sum_k softmax(logits / T)_k * palette_k. "
              "Accuracy: share of pixels whose decoded colour's nearest palette colour is the target's.", "",
              table(["decoding", "val pixel accuracy", "mean abs RGB error (0-255)"], rows), "",
              claims.versus("the annealed mean", m["mae_rgb"], "argmax", a["mae_rgb"], "mean absolute RGB error",
                            2) + " "
              + claims.versus("the annealed mean", m["accuracy"], "argmax", a["accuracy"], "palette accuracy", 3) + " "
              + ("A mean of the likely colours is closer to the truth on average than the single likeliest one, at the "
                 "price of in-between colours." if m["mae_rgb"] < a["mae_rgb"] else
                 "Here averaging the likely colours does not bring the colours closer to the truth."), ""]
    link = ctx["figures"].link_if("decodings.png")
    if link:
        lines += [f"![grey | argmax | annealed mean | true image]({link})"]
    return "\n".join(lines)


PAPER_METRICS = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3), ("ciede2000", "CIEDE2000", 2))


def paper_metrics_section(ctx):
    """PSNR, SSIM and CIEDE2000 of every colourisation model (mean over its seeds) and the rebalanced UNet,
    for both decodings, from the runs' summaries (their final weights on all validation images)."""
    runs = {m: ctx["colour"][m] for m in MODELS if ctx["colour"][m]}
    rebalanced = None
    if ctx["rebalanced"]:
        rebalanced = f"UNet, --rebalance {ctx['rebalanced'][0]['rebalance']['lambda']:g}"
        runs[rebalanced] = ctx["rebalanced"]

    def per_seed(name, key):
        return [s["colour_quality"].get(key) for s in runs[name]]

    def value(name, key):
        found = per_seed(name, key)
        return None if None in found else mean_std(found)[0]

    lines = ["## Extra: the colour metrics colourisation papers report", "",
             "*Beyond the homework: how close are the colours to the truth by the measures papers use?*", "",
             "Each run's final weights on all validation images, argmax and annealed-mean decodings: PSNR and SSIM "
             "(torchmetrics; higher is closer) and the mean CIEDE2000 colour difference in CIELAB (scikit-image; "
             "lower is closer). Mean over each model's seeds.", ""]
    decodings = ("argmax", "annealed")
    headers = ["run", "seeds"] + [f"{label} {d}" for _, label, _ in PAPER_METRICS for d in decodings]
    rows = [[name, len(summaries)] + [fmt(value(name, f"{key}_{d}"), digits) for key, _, digits in PAPER_METRICS
                                      for d in decodings] for name, summaries in runs.items()]
    lines += [table(headers, rows), ""]
    ciede = {name: value(name, "ciede2000_argmax") for name in runs}
    ciede = {k: v for k, v in ciede.items() if v is not None}
    if ciede:
        lines += [f"By CIEDE2000 of the argmax colours (lower is closer): {claims.order_text(ciede, digits=2)}."]
    if "UNet" in ciede and value("UNet", "ciede2000_annealed") is not None:
        text = claims.versus("the annealed mean", value("UNet", "ciede2000_annealed"), "argmax", ciede["UNet"],
                             "CIEDE2000", 2)
        lines += ["For UNet, " + text[:1].lower() + text[1:]]
    if rebalanced in ciede and "UNet" in ciede:
        text = claims.compare("the rebalanced UNet", per_seed(rebalanced, "ciede2000_argmax"), "the plain UNet",
                              per_seed("UNet", "ciede2000_argmax"), "CIEDE2000 (argmax)", 2)
        if ciede[rebalanced] > ciede["UNet"]:
            text += (" More vivid colours are not closer ones: where the colour is uncertain, a rare colour that is "
                     "wrong lies further from the truth than the common dull one.")
        lines += [text]
    return "\n".join(lines)


def baseline_section(ctx):
    base = ctx["seg"]["ce"][0]["baseline"]
    lines = ["## Extra: the no-image baseline", "",
             "*Beyond the homework: how much of the mIoU needs no image at all?*", "",
             f"Rule: {base.get('rule', 'the mean training mask, thresholded')}. Val mIoU {fmt(base.get('val_miou'))} "
             f"(flower IoU {fmt(base.get('val_iou_flower'))}), test mIoU {fmt(base.get('test_miou'))}. Oxford17's "
             "flowers are mostly centred, so position alone scores this much; a run's mIoU above it is what the "
             "image contributes.", ""]
    for loss in ctx["seg"]:
        lines.append("- " + claims.baseline_claim(LOSS_NAMES[loss], values(ctx["seg"][loss], "best_val_miou"),
                                                  base["val_miou"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- runs, reproduce

def runs_section(ctx):
    config = ctx["config"]
    results = Path(config.results_dir)
    rows = []
    found = machines(ctx)
    for part, s in all_summaries(ctx):
        now = ctx["trained"].get(f"{s['task']}/{s['run']}")
        rows.append([part, f"`{rel(run_folder(ctx, s), results)}`", s.get("seed", ""), s["epochs"],
                     secs(s["wall_seconds"]), "trained" if now else "reused",
                     machine_text(read_machine(run_folder(ctx, s)))])
    same = (f"All {len(rows)} runs ran on one machine." if len(found) == 1 else
            f"**These runs ran on {len(found)} different machines** (the machine column).")
    return "\n".join(["## Runs used", "",
                      f"{same} Each run folder holds `config.json`, `summary.json` (settings, per-epoch history, data, "
                      "library versions), `machine.json`, `model.pt` (its best weights) and its figures; TensorBoard "
                      f"logs and checkpoints are in the same run folder under `{config.logs_dir}/`"
                      + (f", and with parallel runs each run's console output is in `{config.logs_dir}/report/`."
                         if ctx.get("threads") else "."), "",
                      table(["part", "run folder", "seed", "epochs", "train s", "this invocation", "machine"], rows)])


def reproduce_section(ctx):
    cmd = " ".join(["python report.py", *ctx["argv"]])
    return "\n".join(["## Reproduce", "", "```bash", cmd, "```", "",
                      "Runs already finished with the same settings are reused, so this rewrites the report without "
                      "training; delete (or move) the run folders to measure again."])
