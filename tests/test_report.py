"""report.py and reporting/: the write-up's sections and generated sentences (invented numbers, no training),
the parallel runner (tiny runs), and `report.py --quick` end to end on the small fixtures."""
import copy
import dataclasses
import functools
import json
import math
import pickle
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import colorization
import report
from reporting import claims, references
from reporting.decodings import decoding_metrics
from reporting.document import SECTIONS, render
from reporting.jobs import Job, JobsFailed, run_jobs
from reporting.markdown import parse_tables, table
from reporting.measures import edge_masks, region_errors, sobel_magnitude
from reporting.reuse import reuse_or_train
from tests import reportctx
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17

slow = pytest.mark.slow
TRAIN_COLOUR = functools.partial(reuse_or_train, colorization.TASK, colorization.prepare, colorization.train)


def sections(text):
    """{heading text: body} of every '## ' section of a markdown document, in order."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def section(text, label):
    found = [body for head, body in sections(text).items() if head == label or head.startswith(label + ":")]
    assert len(found) == 1, (label, list(sections(text)))
    return found[0]


# ----------------------------------------------------------------------------- claims: the words follow the numbers

def test_mean_std_is_the_sample_standard_deviation():
    xs = [0.71, 0.69, 0.75]
    assert claims.mean_std(xs) == (pytest.approx(statistics.mean(xs)), pytest.approx(statistics.stdev(xs)))
    assert claims.mean_std([0.5]) == (0.5, None)
    assert claims.mean_text([0.71, 0.69, 0.75]) == "0.717 ± 0.031 (3 seeds)"


def test_compare_flips_with_the_order():
    assert claims.compare("A", [1.2], "B", [1.5], "loss").startswith("A reaches a lower loss than B: 1.200 vs 1.500; "
                                                                      "one seed each")
    assert claims.compare("A", [1.5], "B", [1.2], "loss").startswith("A reaches a higher loss than B: 1.500 vs 1.200")
    assert claims.compare("A", [1.2], "B", [1.2001], "loss").startswith("A and B reach the same loss to 3 decimals")


def test_compare_calls_a_difference_only_beyond_the_spread():
    apart = claims.compare("A", [1.0, 1.1, 1.2], "B", [2.0, 2.1, 2.2], "loss")  # sd 0.1 each, difference 1.0
    assert apart == ("A reaches a lower loss than B: 1.100 ± 0.100 (3 seeds) vs 2.100 ± 0.100 (3 seeds); the "
                     "difference 1.000 exceeds the seed-to-seed spread (sum of the standard deviations, 0.200).")
    close = claims.compare("A", [1.0, 1.1, 1.2], "B", [1.05, 1.15, 1.25], "loss")  # difference 0.05 < 0.2
    assert close.startswith("No measurable difference in loss between A and B")
    assert "the difference 0.050 is within the seed-to-seed spread" in close


def test_trend_and_order():
    assert claims.trend([32, 64, 128], [1.1, 1.2, 1.3]) == "rises"
    assert claims.trend([128, 32, 64], [1.3, 1.1, 1.2]) == "rises"  # sorted by x first
    assert claims.trend([32, 64, 128], [1.3, 1.2, 1.1]) == "falls"
    assert claims.trend([32, 64, 128], [1.1, 1.3, 1.2]) == "does not change monotonically"
    assert claims.order_text({"a": 2.0, "b": 1.0}) == "b (1.000) < a (2.000)"


def test_epochs_to_reach_and_curve_comment():
    rows = reportctx.history([2.0, 1.5, 1.2, 1.3])
    assert claims.epochs_to_reach(rows, 1.5) == 2
    assert claims.epochs_to_reach(rows, 1.1) is None
    assert claims.curve_comment(rows, "N").startswith("N's validation loss was lowest at epoch 3 (1.200) and ended "
                                                      "0.100 higher at epoch 4 (1.300)")
    falling = claims.curve_comment(reportctx.history([2.0, 1.5, 1.2]), "N")
    assert falling.startswith("N's validation loss was still falling at its last epoch (3: 1.200)")
    assert "the training loss ended above it (1.250)" in falling
    below = claims.curve_comment(reportctx.history([2.0, 1.5], train=[1.0, 0.9]), "N")
    assert "the training loss ended below it (0.900)" in below


def test_look_verdict_follows_colourfulness_and_the_commonest_colours():
    dull = reportctx.quality(ratio=0.5, pred_share=[0.5, 0.3, 0.2] + [0.0] * 21)
    verdict = claims.look_verdict(dull)
    assert verdict.startswith("No, not as colour images")
    assert "less colourful than the true images (Hasler-Suesstrunk colourfulness ratio 0.50)" in verdict
    top3 = sum(dull["target_share"][:3])
    assert f"take 100.0 % of the predicted pixels against {100 * top3:.1f} % of the true ones (more)" in verdict
    assert "the 3 rarest colours are recalled at colour 23: 50.0 %, colour 22: 50.0 %, colour 21: 50.0 %" in verdict
    vivid = claims.look_verdict(reportctx.quality(ratio=1.2))
    assert vivid.startswith("Yes, in colour as well: the predictions are more colourful")
    assert claims.look_verdict(reportctx.quality(ratio=0.9)).startswith("Partly:")


def test_region_claim_says_where_the_error_fell():
    edges = claims.region_claim("A", reportctx.regions(30.0, 10.0), "B", reportctx.regions(24.0, 9.5))
    assert edges == ("B's RGB error on edge pixels is 20.0 % lower than A's (24.00 vs 30.00), on flat pixels 5.0 % "
                     "lower (9.50 vs 10.00): the skip connections help most where the image has detail.")
    flat = claims.region_claim("A", reportctx.regions(30.0, 10.0), "B", reportctx.regions(29.0, 8.0))
    assert flat.endswith("here the skip connections help edges no more than flat regions.")


def test_baseline_and_class_claims_flip():
    assert claims.baseline_claim("CE", [0.7, 0.8], 0.5) == ("CE: best val mIoU 0.750 ± 0.071 (2 seeds), 0.250 above "
                                                         "the no-image baseline (0.500); that margin exceeds the "
                                                         "seed-to-seed standard deviation (0.071).")
    assert "0.100 below the no-image baseline (0.500)" in claims.baseline_claim("CE", [0.4], 0.5)
    assert claims.classes_claim("R", 0.7, 0.6) == "R segments the flower worse than the background (final val IoU " \
                                                  "0.600 vs 0.800)."
    assert claims.classes_claim("R", 0.7, 0.9).startswith("R segments the flower better than the background")


def test_doubling_and_padding_claims():
    counts = {"32x32": {"weights": 10, "outputs": 100, "connections": 1000},
              "64x64": {"weights": 10, "outputs": 400, "connections": 4000}}
    assert claims.doubling_claim(counts) == ("From 32x32 to 64x64: the weights stay the same (10 -> 10), the outputs "
                                             "grow 4x (100 -> 400), the connections grow 4x (1000 -> 4000).")
    counts["64x64"]["weights"] = 20
    assert "the weights grow 2x (10 -> 20)" in claims.doubling_claim(counts)
    rows = [{"kernel": 3, "output_padding": 1}, {"kernel": 4, "output_padding": 0}, {"kernel": 5, "output_padding": 1}]
    assert "output padding 0 for kernel 4; output padding 1 for kernels 3, 5" in claims.padding_claim(rows)


# ----------------------------------------------------------------------------- the document

def test_the_twelve_sections_come_in_the_submission_order(tmp_path):
    text = render(reportctx.ctx(tmp_path))
    labelled = [h.split(":")[0] for h in sections(text) if h.startswith("Q")]
    assert labelled == ["Q2 in 1.1", "Q3 in 1.1", "Q2 in 1.2", "Q3 in 1.2", "Q4 in 1.2", "Q5 in 1.2", "Q2 in 1.3",
                        "Q3 in 1.3", "Q1 in 2.1", "Q2 in 2.1", "Q1 in 2.2", "Q2 in 2.2"]
    assert list(SECTIONS) == labelled
    for label in labelled:  # each paraphrases its question in one line, then answers
        body = section(text, label).strip().splitlines()
        assert body[0].startswith("*Asked (paraphrased): ") and body[0].endswith("*"), (label, body[0])
        assert "**Answer.**" in section(text, label) or "**Comments.**" in section(text, label) or \
               label in ("Q2 in 2.1", "Q2 in 2.2"), label
    extras = [h for h in sections(text) if h.startswith("Extra")]
    assert [e.split(":")[1].strip().split(",")[0] for e in extras] == [
        "decoding the colour distribution", "the colour metrics colourisation papers report",
        "class rebalancing (`--rebalance 0.5`)", "the no-image baseline"]


def _set_loss(c, model, val):
    c["colour"][model] = [reportctx.colour(model, val=val)]


# (section, how to change the invented numbers, a sentence before, the sentence after)
FLIPS = {
    "Q2 in 1.1": (lambda c: c["colour"]["PoolUpsampleNet"][0].update(
        colour_quality=reportctx.quality(ratio=1.3)), "**Answer.** Partly:", "**Answer.** Yes, in colour as well:"),
    "Q3 in 1.1": None,  # counts of the real model: tested with invented counts above (doubling_claim)
    "Q2 in 1.2": (lambda c: _set_loss(c, "ConvTransposeNet", (1.9, 1.4, 1.5)),
                  "validation loss was still falling", "validation loss was lowest at epoch 2"),
    "Q3 in 1.2": (lambda c: _set_loss(c, "ConvTransposeNet", (1.9, 1.8, 1.9)),
                  "ConvTransposeNet reaches a lower final validation loss than PoolUpsampleNet",
                  "ConvTransposeNet reaches a higher final validation loss than PoolUpsampleNet"),
    "Q4 in 1.2": None,  # models/padding.py's table: tested with invented rows above (padding_claim)
    "Q5 in 1.2": (lambda c: c.update(sweep=reportctx.sweep(Path(c["config"].logs_dir).parent, [
        reportctx.colour("ConvTransposeNet", batch_size=b, val=(1.5 - b / 1000, 1.4 - b / 1000),
                         q=reportctx.quality(ratio=0.5 + b / 1000)) for b in (32, 128, 512)])),
                  "the final validation loss rises with the batch size",
                  "the final validation loss falls with the batch size"),
    "Q2 in 1.3": (lambda c: _set_loss(c, "UNet", (1.7, 1.2, 1.3)), "validation loss was still falling",
                  "validation loss was lowest at epoch 2"),
    "Q3 in 1.3": (lambda c: _set_loss(c, "UNet", (1.9, 1.8, 1.6)),
                  "UNet reaches a lower final validation loss than ConvTransposeNet",
                  "UNet reaches a higher final validation loss than ConvTransposeNet"),
    "Q1 in 2.1": (lambda c: c["seg"].update(ce=[reportctx.seg("ce", s, best=0.40 + s / 100) for s in range(3)]),
                  "0.210 above the no-image baseline", "0.090 below the no-image baseline"),
    "Q2 in 2.1": (lambda c: c["seg"]["ce"][0].update(final_val_iou_flower=0.9),
                  "segments the flower worse than the background", "segments the flower better than the background"),
    "Q1 in 2.2": (lambda c: c["seg"].update(iou=[reportctx.seg("iou", s, best=0.80 + s / 100) for s in range(3)]),
                  "The soft IoU loss reaches a lower best validation mIoU than cross-entropy",
                  "The soft IoU loss reaches a higher best validation mIoU than cross-entropy"),
    "Q2 in 2.2": (lambda c: c["seg"]["iou"][0].update(final_val_iou_flower=0.9),
                  "segments the flower worse than the background", "segments the flower better than the background"),
}


def _paper_quality(ciede, annealed, psnr=24.0):
    return {**reportctx.quality(), "psnr_argmax": psnr, "psnr_annealed": psnr + 1, "ssim_argmax": 0.8,
            "ssim_annealed": 0.9, "ciede2000_argmax": ciede, "ciede2000_annealed": annealed}


def test_paper_metrics_come_from_the_summaries_and_the_sentences_follow_them(tmp_path):
    label = "Extra: the colour metrics colourisation papers report"
    c = reportctx.ctx(tmp_path)
    for model, ciede in (("PoolUpsampleNet", 14.0), ("ConvTransposeNet", 12.0), ("UNet", 11.0)):
        c["colour"][model] = [reportctx.colour(model, q=_paper_quality(ciede, ciede - 1, psnr=20 + ciede / 10))]
    c["rebalanced"] = [reportctx.colour("UNet", rebalance=0.5, q=_paper_quality(11.5, 9.0))]
    text = section(render(c), label)
    [rows] = parse_tables(text)
    assert [r["run"] for r in rows] == ["PoolUpsampleNet", "ConvTransposeNet", "UNet", "UNet, --rebalance 0.5"]
    assert [float(r["CIEDE2000 argmax"]) for r in rows] == [14.0, 12.0, 11.0, 11.5]
    assert (rows[0]["PSNR (dB) argmax"], rows[0]["PSNR (dB) annealed"]) == ("21.40", "22.40")
    assert "UNet (11.00) < UNet, --rebalance 0.5 (11.50) < ConvTransposeNet (12.00) < PoolUpsampleNet (14.00)" in text
    assert "For UNet, the annealed mean has a lower CIEDE2000 than argmax (10.00 vs 11.00)" in text
    assert "The rebalanced UNet reaches a higher CIEDE2000 (argmax) than the plain UNet" in text
    assert "More vivid colours are not closer ones" in text
    c["rebalanced"] = [reportctx.colour("UNet", rebalance=0.5, q=_paper_quality(10.5, 9.0))]
    c["colour"]["UNet"] = [reportctx.colour("UNet", q=_paper_quality(11.0, 12.0))]
    text = section(render(c), label)
    assert "For UNet, the annealed mean has a higher CIEDE2000 than argmax (12.00 vs 11.00)" in text
    assert "The rebalanced UNet reaches a lower CIEDE2000 (argmax) than the plain UNet" in text
    assert "More vivid colours are not closer ones" not in text


@pytest.mark.parametrize("label", [k for k, v in FLIPS.items() if v])
def test_flipping_the_numbers_flips_the_answer(tmp_path, label):
    change, before, after = FLIPS[label]
    c = reportctx.ctx(tmp_path)
    first = section(render(c), label)
    assert before in first and after not in first, first
    flipped = copy.deepcopy({k: v for k, v in c.items() if k != "figures"})
    flipped["figures"] = c["figures"]
    change(flipped)
    second = section(render(flipped), label)
    assert after in second and before not in second, second


def test_the_seg_comparison_over_seeds_states_mean_sd_and_the_spread(tmp_path):
    c = reportctx.ctx(tmp_path)
    text = section(render(c), "Q1 in 2.2")
    # invented: CE 0.70 / 0.71 / 0.72, soft IoU 0.60 / 0.61 / 0.62
    assert ("The soft IoU loss reaches a lower best validation mIoU than cross-entropy: 0.610 ± 0.010 (3 seeds) vs "
            "0.710 ± 0.010 (3 seeds); the difference 0.100 exceeds the seed-to-seed spread") in text
    assert "What random trunk features allow one to conclude" in text
    c["seg"]["iou"] = [reportctx.seg("iou", s, best=0.69 + s / 100) for s in range(3)]
    assert "No measurable difference in best validation mIoU between the soft IoU loss and cross-entropy" in \
           section(render(c), "Q1 in 2.2")


def test_one_colour_seed_says_the_spread_is_not_measured(tmp_path):
    text = render(reportctx.ctx(tmp_path))
    assert "one seed each, so whether this exceeds the seed-to-seed spread is not measured here" in \
           section(text, "Q3 in 1.2")
    assert "(the default on a CPU, where each run takes minutes; `--seeds 3`" in text


def test_skip_connection_reasons_follow_the_measurements(tmp_path):
    c = reportctx.ctx(tmp_path)
    text = section(render(c), "Q3 in 1.3")
    assert "Supported here: the error falls more on edge pixels than on flat ones." in text
    # UNet (1.7, 1.4, 1.3) reaches ConvTransposeNet's final 1.5 at epoch 2, ConvTransposeNet at epoch 3
    assert "Validation loss at or below ConvTransposeNet's final 1.500: ConvTransposeNet after 3 epochs, UNet after " \
           "2 epochs" in text
    assert "Supported here: UNet reaches ConvTransposeNet's final validation loss after 2 epochs" in text
    c["measured"]["regions"]["UNet"] = [reportctx.regions(29.0, 8.0)]
    _set_loss(c, "UNet", (1.7, 1.6, 1.45))
    text = section(render(c), "Q3 in 1.3")
    assert "Not supported by this measurement: the error does not fall more on edge pixels" in text
    assert "Not supported by these runs: UNet does not reach ConvTransposeNet's final validation loss in fewer" in text


def test_sweep_answer_uses_steps_and_measured_quality(tmp_path):
    text = section(render(reportctx.ctx(tmp_path)), "Q5 in 1.2")
    rows = {r["batch size"]: r for r in next(t for t in parse_tables(text) if "batch size" in t[0])}
    assert [rows[b]["steps"] for b in ("32", "128", "512")] == ["314", "80", "20"]  # ceil(5000 / b) * 2 epochs
    assert [rows[b]["colourfulness ratio"] for b in ("32", "128", "512")] == ["0.77", "0.67", "0.29"]
    assert "the colourfulness ratio (prediction / truth) falls with the batch size" in text
    assert "batch 32 took 314 optimiser steps, batch 512 20 (16x fewer)" in text
    # batch 512 ends at 20 steps with 1.912; batch 32 passes 20 steps in epoch 1 (157 steps) with 1.532
    assert "after its 20 steps batch 512 reached a validation loss of 1.912, higher than batch 32's 1.532 after 157 " \
           "steps (epoch 1): even per update the larger batch is behind" in text


def reference_cells(text):
    cells = []
    for t in parse_tables(text):
        for row in t:
            cells += [v for k, v in row.items() if k == references.COLUMN]
    return cells


def test_every_reference_value_carries_its_source(tmp_path):
    text = render(reportctx.ctx(tmp_path))
    cells = [c for c in reference_cells(text) if c]
    # the three models, the sweep's batch 32 and 128 (64 is not swept here), the two losses
    assert sorted(cells) == sorted(["1.585 [S1]", "around 1.18 [S2]", "around 1.06 [S2]", "1.11 [S2]", "1.24 [S2]",
                                    "0.72 [S2]", "0.74 [S2]"])
    refs = section(text, "References")
    for tag in ("S1", "S2"):
        assert f"- [{tag}] " in refs
    assert "galib19/CSE-891-Deep-Learning" in refs and "Programming-Assignments/programming-assignment-2/" in refs
    for difference in ("trn1+trn2+trn3", "val1", "background", "bilinearly", "AdamW, learning rate 0.05, batch 128",
                       "224 px", "train mode"):
        assert difference in refs, difference
    for unsourced in ("41.4", "54.7", "58.9", "1.157", "1.051"):
        assert unsourced not in text


def test_reference_table_has_a_source_for_every_value():
    assert references.VALUES and set(t for _, t in references.VALUES.values()) <= set(references.SOURCES)
    assert references.cell("val loss", "PoolUpsampleNet") == "1.585 [S1]"
    assert references.cell("val loss", "nothing") == ""
    assert references.number("val loss", "ConvTransposeNet") == 1.18


def test_header_states_the_measured_time_and_the_runs_trained(tmp_path):
    c = reportctx.ctx(tmp_path, wall_seconds=754.0)
    c["trained"] = {k: i % 3 == 0 for i, k in enumerate(c["trained"])}
    text = render(c)
    assert len(c["trained"]) == 3 + 1 + 3 + 6  # models, rebalanced, sweep, 2 losses x 3 seeds; every third trained
    assert ("**This invocation took 12.6 min** (wall time measured by report.py from its start to writing this "
            "file) and **trained 5 of the 13 runs it uses**; it reused the other 8") in text
    assert "Runs: 2 at a time, each in its own process with 1 torch thread." in text


def test_the_runs_table_shows_each_runs_machine_and_says_when_they_differ(tmp_path):
    a = {"cpu": "CPU A", "logical_cpus": 2, "torch_threads": 1, "accelerator": "CPU only"}
    b = {"cpu": "CPU B", "logical_cpus": 16, "torch_threads": 16, "accelerator": "NVIDIA H200"}
    c = reportctx.ctx(tmp_path)
    reportctx.write_machines(c, [a])
    text = render(c)
    runs = next(t for t in parse_tables(text) if "machine" in t[0] and "run folder" in t[0])
    assert len(runs) == 13 and {r["machine"] for r in runs} == {"CPU A, 2 logical CPUs (torch: 1 thread), CPU only"}
    assert "All 13 runs ran on one machine." in text and "All 13 runs record the same machine" in text
    reportctx.write_machines(c, [a, b])
    text = render(c)
    runs = next(t for t in parse_tables(text) if "machine" in t[0] and "run folder" in t[0])
    assert [r["machine"].split(",")[0] for r in runs[:3]] == ["CPU A", "CPU B", "CPU A"]
    assert "**These runs ran on 2 different machines**" in text
    assert "**The runs do not all come from one machine**" in text


def test_quick_writes_outside_the_checkout_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = report.resolve(report.ReportConfig(quick=True))
    for folder in (config.results_dir, config.logs_dir):
        assert Path(folder).is_relative_to(tmp_path / "cache") and not Path(folder).resolve().is_relative_to(REPO)
    assert (config.epochs, config.sweep_epochs, config.seg_epochs, config.seeds, config.seg_seeds) == (1, 1, 1, 1, 2)
    assert (config.seg_weights, config.seg_backbone, config.seg_image_size) == ("none", "resnet50", 64)


def test_defaults_follow_the_weights_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = report.resolve(report.ReportConfig())
    assert (config.epochs, config.sweep_epochs, config.seg_epochs, config.seg_seeds) == (25, 10, 10, 3)
    assert (config.seg_weights, config.seg_backbone, config.seg_image_size) == ("none", "resnet50", 128)
    assert config.results_dir == "results" and config.logs_dir == "logs"
    weights, _, _ = report.coco_weights("resnet101")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    config = report.resolve(report.ReportConfig())
    assert (config.seg_weights, config.seg_backbone, config.seg_image_size) == ("coco", "resnet101", 224)
    Path(str(weights) + ".standin").write_text("")  # a stand-in is not the COCO weights
    assert report.resolve(report.ReportConfig()).seg_weights == "none"


def test_plan_lists_every_run_once_with_its_seed(tmp_path):
    config = reportctx.config(tmp_path, seeds=2, seg_seeds=3, sweep_batch_sizes=(64, 32))
    jobs, meta = report.plan(config)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) == 2 * 4 + 2 + 2 * 3
    colour = [j for j in jobs if meta[j.name]["kind"] == "colour"]
    assert sorted((j.config.model, j.config.seed) for j in colour) == sorted(
        (m, s) for m in report.COLOUR_MODELS for s in (0, 1))
    assert [j.config.batch_size for j in jobs if meta[j.name]["kind"] == "sweep"] == [32, 64]
    seg = [j for j in jobs if meta[j.name]["kind"] == "seg"]
    assert [j.after for j in seg] == [()] + [(seg[0].name,)] * 5  # the first fills the feature store
    assert all(j.config.progress_bar is False for j in jobs)  # jobs=2: console output goes to log files
    assert {j.config.rebalance for j in jobs if meta[j.name]["kind"] == "rebalanced"} == {0.5}
    for job in (colour[0], seg[0]):  # a worker gets the job by pickle: reuse_or_train of the job's task file
        train = pickle.loads(pickle.dumps(job.train))
        task = "colorization" if job in colour else "segmentation"
        assert (train.func, train.args[0], train.args[1].__module__) == (reuse_or_train, task, task)


def test_markdown_tables_round_trip_with_pipes():
    text = "intro\n\n" + table(["a", "b|c"], [[1, "x|y"], [2.5, ""]]) + "\n\nafter"
    assert parse_tables(text) == [[{"a": "1", "b|c": "x|y"}, {"a": "2.5", "b|c": ""}]]
    with pytest.raises(ValueError):
        parse_tables("| a | b |\n| --- | --- |\n| 1 |")


# ----------------------------------------------------------------------------- measurements

def test_decoding_metrics_on_known_logits():
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([[[0, 1], [2, 2]]])
    rgb = torch.full((1, 3, 2, 2), 0.2)
    logits = 2 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    m = decoding_metrics(lambda grey: logits, torch.zeros(1, 1, 2, 2), target, rgb, palette, temperature=0.38)
    assert m["argmax"]["accuracy"] == 1.0
    expected = 255 * (palette[target].permute(0, 3, 1, 2) - rgb).abs().mean().item()
    assert m["argmax"]["mae_rgb"] == pytest.approx(expected)
    assert m["annealed"]["accuracy"] == 1.0  # peaked logits: the mean stays nearest the argmax colour
    assert m["annealed"]["mae_rgb"] != pytest.approx(expected)  # but is not exactly it


def test_sobel_edges_and_region_errors_on_a_known_image():
    grey = torch.zeros(1, 1, 4, 6)
    grey[..., 3:] = 1.0  # a vertical edge between columns 2 and 3
    magnitude = sobel_magnitude(grey)
    assert magnitude[0, :, 2].tolist() == [4.0] * 4 and magnitude[0, :, 3].tolist() == [4.0] * 4
    assert magnitude[0, :, [0, 1, 4, 5]].abs().max() == 0
    masks = edge_masks(grey, edge_share=1 / 3, flat_share=2 / 3)
    assert masks["edge"][0].nonzero()[:, 1].unique().tolist() == [2, 3]
    assert masks["flat"][0].nonzero()[:, 1].unique().tolist() == [0, 1, 4, 5]
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    rgb = torch.zeros(1, 3, 4, 6)
    rgb[..., 3:] = 1.0
    wrong_edges = torch.zeros(1, 2, 4, 6)  # predicts black everywhere but the truth is white from column 3
    wrong_edges[:, 0] = 1.0
    errors = region_errors(lambda g: wrong_edges, grey, rgb, palette, masks)
    # edge: columns 2 (right) and 3 (wrong: 255 per channel); flat: columns 4, 5 wrong, 0, 1 right
    assert errors == {"edge": pytest.approx(127.5), "flat": pytest.approx(127.5), "all": pytest.approx(127.5)}
    rgb[..., 4:] = 0.0  # now only column 3 is wrong
    errors = region_errors(lambda g: wrong_edges, grey, rgb, palette, masks)
    assert errors == {"edge": pytest.approx(127.5), "flat": pytest.approx(0.0), "all": pytest.approx(255 / 6)}


# ----------------------------------------------------------------------------- the runner

@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=8, horse_every=2)  # 20 train and 4 val horses
    return root


def tiny(cifar, out, model, **changes):
    return colorization.ColorizationConfig(**{**dict(
        model=model, epochs=1, num_filters=8, batch_size=8, data_dir=str(cifar), results_dir=str(out / "results"),
        logs_dir=str(out / "logs"), accelerator="cpu", devices=1, compile=False, progress_bar=False), **changes})


def run_files(results):
    """{run folder name: sorted file names} of the colourisation runs in `results`."""
    return {p.name: sorted(f.name for f in p.iterdir()) for p in (results / "colorization").iterdir()}


@slow
def test_two_jobs_give_the_results_of_one(cifar, tmp_path):
    """The same two runs in this process and in two worker processes with this process's thread count: equal
    numbers and the same files (the run folders' names differ only by their time stamps)."""
    threads = torch.get_num_threads()
    out = {}
    for workers in (1, 2):
        folder = tmp_path / f"jobs{workers}"
        jobs = [Job(m, TRAIN_COLOUR, tiny(cifar, folder, m)) for m in ("UNet", "PoolUpsampleNet")]
        out[workers] = (run_jobs(jobs, workers, threads if workers > 1 else None, folder / "logs" / "report",
                                 log=lambda line: None), folder)
    (one, folder1), (two, folder2) = out[1], out[2]
    assert list(one) == list(two) == ["UNet", "PoolUpsampleNet"]
    for name in one:
        a, b = one[name][0], two[name][0]
        assert (one[name][1], two[name][1]) == (True, True)
        assert [h["val/loss"] for h in a["history"]] == [h["val/loss"] for h in b["history"]]
        assert a["colour_quality"] == b["colour_quality"]
    assert sorted(run_files(folder1 / "results").values()) == sorted(run_files(folder2 / "results").values())
    assert list((folder2 / "logs" / "report").iterdir()) == []  # each console log moved into its run's logs folder
    for name in one:
        console = Path(two[name][0]["logs"]) / "console.log"
        assert f"{name}: best val loss" in console.read_text()
        assert not (Path(one[name][0]["logs"]) / "console.log").exists()  # one worker: the console, as a run alone
    assert not (folder1 / "logs" / "report").exists()


@slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_run_is_named_and_the_others_are_kept(cifar, tmp_path, workers):
    jobs = [Job("broken UNet", TRAIN_COLOUR,
                tiny(cifar, tmp_path, "UNet", data_dir=str(tmp_path / "x"), num_workers=0)),
            Job("good PoolUpsampleNet", TRAIN_COLOUR, tiny(cifar, tmp_path, "PoolUpsampleNet")),
            Job("waits for the broken one", TRAIN_COLOUR, tiny(cifar, tmp_path, "ConvTransposeNet"),
                after=("broken UNet",))]
    with pytest.raises(JobsFailed) as caught:
        run_jobs(jobs, workers, 1, tmp_path / "logs" / "report", log=lambda line: None)
    e = caught.value
    assert list(e.failures) == ["broken UNet", "waits for the broken one"]
    assert "CIFAR-10" in e.failures["broken UNet"] or "cifar" in e.failures["broken UNet"].lower()
    assert e.failures["waits for the broken one"] == "not run: it waits for broken UNet, which failed"
    assert str(e).startswith("2 of 3 runs failed: broken UNet: ")
    assert list(e.done) == ["good PoolUpsampleNet"]
    folder = tmp_path / "results" / "colorization" / e.done["good PoolUpsampleNet"][0]["run"]
    assert json.loads((folder / "summary.json").read_text())["model"] == "PoolUpsampleNet"
    assert [p.name.split("-")[0] for p in (tmp_path / "results" / "colorization").iterdir()] == ["PoolUpsampleNet"]


def test_jobs_that_wait_for_later_ones_are_refused():
    with pytest.raises(ValueError, match="waits for"):
        run_jobs([Job("a", print, None, after=("b",)), Job("b", print, None)])
    with pytest.raises(ValueError, match="must differ"):
        run_jobs([Job("a", print, None), Job("a", print, None)])


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar_folder(root / "cifar", n_per_batch=8, horse_every=2)
    write_oxford17(root / "oxford17", per_class=8)
    return root


@pytest.fixture(scope="module")
def quick(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    argv = ["--quick", "--data-dir-cifar", data / "cifar", "--data-dir-oxford17", data / "oxford17",
            "--results-dir", out / "results", "--logs-dir", out / "logs", "--num-filters", 8,
            "--sweep-batch-sizes", 8, 16, "--seg-backbone", "mobilenet_v3_large", "--seg-weights", "none",
            "--seg-image-size", 64, "--seg-batch-size", 4, "--accelerator", "cpu", "--no-compile", "--jobs", 1]
    assert report.main(argv) == 0
    return out / "results", argv


def summaries(results):
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/*/summary.json")}


@slow
def test_quick_report_has_every_section_and_the_runs_numbers(quick):
    results, _ = quick
    text = (results / "REPORT.md").read_text()
    assert "Smoke run (`--quick`)" in text and "Pipeline check, not the homework's numbers" in text
    assert [h.split(":")[0] for h in sections(text) if h.startswith("Q")] == list(SECTIONS)
    runs = summaries(results)
    assert len(runs) == 3 + 1 + 2 + 2 * 2  # models, rebalanced UNet, sweep, two losses x two seeds
    by_model = {s["model"]: s for s in runs.values() if s["task"] == "colorization" and s["batch_size"] == 100
                and s["rebalance"] is None}
    models = next(t for t in parse_tables(section(text, "Q3 in 1.2")) if "model" in t[0])
    assert [r["model"] for r in models] == ["PoolUpsampleNet", "ConvTransposeNet", "UNet", "uniform guess (ln 24)"]
    for row in models[:3]:
        assert row["final val loss"] == f"{by_model[row['model']]['final_val_loss']:.3f}"
    assert models[3]["final val loss"] == f"{math.log(24):.3f}"
    seg = next(t for t in parse_tables(section(text, "Q1 in 2.2")) if "loss" in t[0])
    iou = sorted((s for s in runs.values() if s["task"] == "segmentation" and s["loss"] == "iou"),
                 key=lambda s: s["seed"])
    assert [r["best val mIoU (epoch)"] for r in seg[:2]] == [f"{s['best_val_miou']:.3f} (1)" for s in iou]
    sweep = next(t for t in parse_tables(section(text, "Q5 in 1.2")) if "batch size" in t[0])
    assert [(r["batch size"], r["steps"]) for r in sweep] == [("8", "3"), ("16", "2")]  # 20 train horses, 1 epoch
    table_runs = next(t for t in parse_tables(text) if "run folder" in t[0])
    assert sorted(r["run folder"].strip("`").split("/")[1] for r in table_runs) == sorted(runs)
    assert {r["this invocation"] for r in table_runs} == {"trained"}
    assert "**trained 10 of the 10 runs it uses**." in text


@slow
def test_every_linked_figure_is_a_png_in_the_report_folder(quick):
    results, _ = quick
    text = (results / "REPORT.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # 3 models x (curves, samples), sweep figure + 2 grids, 2 losses x (curves, predictions), decodings, 2 rebalancing
    assert len(links) == 3 * 2 + 1 + 2 + 2 * 2 + 1 + 2
    for link in links:
        assert link.startswith("report/")
        with Image.open(results / link) as im:
            im.verify()
            assert im.format == "PNG"
    assert {p.name for p in (results / "report").iterdir()} == {link.split("/")[1] for link in links}


@slow
def test_second_invocation_trains_nothing(quick):
    results, argv = quick
    before = sorted(summaries(results))
    assert report.main(argv) == 0
    assert sorted(summaries(results)) == before
    text = (results / "REPORT.md").read_text()
    assert "**trained 0 of the 10 runs it uses**; it reused the other 10" in text
    table_runs = next(t for t in parse_tables(text) if "run folder" in t[0])
    assert len(table_runs) == 10 and {r["this invocation"] for r in table_runs} == {"reused"}


@slow
def test_missing_oxford17_is_one_line_before_any_training(data, tmp_path):
    proc = subprocess.run([sys.executable, "report.py", "--quick", "--data-dir-cifar", str(data / "cifar"),
                           "--data-dir-oxford17", str(tmp_path / "none"), "--results-dir", str(tmp_path / "r"),
                           "--logs-dir", str(tmp_path / "l")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "Oxford17" in proc.stderr
    assert not (tmp_path / "r" / "colorization").exists()


def test_bad_flag_is_one_line_exit_2(tmp_path, capsys):
    from tests.clirun import error_lines, run_main

    code, _, err = run_main(report.main, ["--jobs", "0", "--results-dir", tmp_path / "r"], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "--jobs" in err
    assert list(tmp_path.iterdir()) == []


def test_report_config_fields_are_checked():
    with pytest.raises(Exception, match="sweep_model"):
        report.ReportConfig(sweep_model="VGG")
    assert dataclasses.replace(report.ReportConfig(), seeds=3).seeds == 3
