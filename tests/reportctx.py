"""Invented run summaries and a whole report context for reporting/document.py, without training anything.

Every value is chosen by the test that uses it (or a default below), so a test can flip an order and
check that the generated sentence flips with it.
"""
import dataclasses
import json
from pathlib import Path

import report
from colorization_sweep import csv_row
from reporting.document import Figures

Q = 24
TRAIN, VAL = 5000, 1000


def quality(ratio=0.6, pred_share=None, target_share=None, recall=None, mean_recall=0.3, accuracy=0.4):
    """A colour_quality dict: colour q has target share proportional to Q - q (colour 0 commonest)."""
    weights = [Q - q for q in range(Q)]
    target_share = target_share or [w / sum(weights) for w in weights]
    pred_share = pred_share or list(target_share)
    recall = recall or [0.5] * Q
    return {"colourfulness_ratio": ratio, "colourfulness_pred": 30.0 * ratio, "colourfulness_true": 30.0,
            "colourfulness_target": 28.0, "mae_rgb_argmax": 20.0, "mae_rgb_annealed": 18.0, "accuracy": accuracy,
            "mean_recall": mean_recall, "target_share": target_share, "pred_share": pred_share, "recall": recall,
            "palette": [[q / Q, q / Q, q / Q] for q in range(Q)], "images": VAL}


def history(val, train=None, key="val/loss"):
    """Per-epoch rows (epoch from 1) from a list of validation values (and training losses)."""
    train = train or [v + 0.05 for v in val]
    return [{"epoch": e, key: v, "train/loss": t, "val/acc": 0.5} for e, (v, t) in enumerate(zip(val, train), 1)]


def colour(model, seed=0, val=(2.0, 1.8, 1.6), batch_size=100, rebalance=None, q=None, run=None, **fields):
    val = list(val)
    s = {"task": "colorization", "run": run or f"{model}-{batch_size}-{seed}-{rebalance}", "model": model,
         "seed": seed, "batch_size": batch_size, "epochs": len(val), "history": history(val),
         "final_val_loss": val[-1], "final_val_acc": 0.5, "final_train_loss": val[-1] + 0.05,
         "final_train_acc": 0.5, "best_val_loss": min(val), "best_val_loss_epoch": val.index(min(val)) + 1,
         "best_val_acc": 0.5, "best_val_acc_epoch": len(val), "wall_seconds": 100.0,
         "colour_quality": q or quality(), "data": {"train": TRAIN, "val": VAL, "folder": "/nowhere/cifar",
                                                    "palette": "default", "num_colours": Q},
         "rebalance": ({"lambda": rebalance, "class_weights": [0.5] * 12 + [1.5] * 12} if rebalance else None),
         "versions": {"torch": "x"}}
    s.update(fields)
    return s


def seg(loss, seed=0, best=0.7, flower=None, final=None, baseline=0.5, test=None, val_loss=(0.6, 0.5, 0.4)):
    """A segmentation summary; the flower IoU defaults to 0.1 below the mIoU (so the background's is 0.1 above)."""
    return {"task": "segmentation", "run": f"{loss}-{seed}", "loss": loss, "seed": seed, "epochs": len(val_loss),
            "history": [{"epoch": e, "val/loss": v, "train/loss": v + 0.01, "val/miou": best}
                        for e, v in enumerate(val_loss, 1)],
            "best_val_miou": best, "best_val_miou_epoch": 2, "final_val_miou": best if final is None else final,
            "final_val_iou_flower": best - 0.1 if flower is None else flower,
            "test_miou": best if test is None else test, "wall_seconds": 20.0,
            "baseline": {"rule": "the mean mask", "val_miou": baseline, "val_iou_flower": 0.4, "test_miou": baseline}}


def config(tmp_path, **changes):
    base = report.ReportConfig(results_dir=str(tmp_path / "results"), logs_dir=str(tmp_path / "logs"), epochs=3,
                               sweep_epochs=2, seg_epochs=3, seg_weights="none", seg_backbone="resnet50",
                               seg_image_size=128, seeds=1, seg_seeds=3, jobs=2, data_dir_oxford17=str(tmp_path))
    return dataclasses.replace(base, **changes)


def sweep(tmp_path, summaries):
    return {"rows": [csv_row(s) for s in summaries], "summaries": summaries,
            "csv": tmp_path / "results" / "colorization" / "batch_sweep" / "batch_sweep.csv",
            "figure": tmp_path / "results" / "colorization" / "batch_sweep" / "val_loss.png", "samples": {}}


def regions(edge, flat):
    return {"edge": edge, "flat": flat, "all": (edge + flat) / 2}


def ctx(tmp_path, **changes):
    """A whole render() context; keyword arguments replace its entries."""
    colour_runs = {"PoolUpsampleNet": [colour("PoolUpsampleNet", val=(2.0, 1.8, 1.7))],
                   "ConvTransposeNet": [colour("ConvTransposeNet", val=(1.9, 1.6, 1.5))],
                   "UNet": [colour("UNet", val=(1.7, 1.4, 1.3))]}
    sweeps = [colour("ConvTransposeNet", batch_size=b, val=(1.5 + b / 1000, 1.4 + b / 1000),
                     q=quality(ratio=0.8 - b / 1000, mean_recall=0.4 - b / 2000)) for b in (32, 128, 512)]
    out = {"config": config(tmp_path), "argv": [], "date": "2026-01-01 00:00 UTC", "wall_seconds": 600.0,
           "machine": {"cpu": "Test CPU", "logical_cpus": 2, "torch_threads": 2, "accelerator": "CPU only"},
           "figures": Figures(tmp_path / "results" / "report"), "colour": colour_runs,
           "rebalanced": [colour("UNet", rebalance=0.5, q=quality(ratio=0.8))],
           "sweep": sweep(tmp_path, sweeps),
           "seg": {"ce": [seg("ce", s, best=0.70 + s / 100) for s in range(3)],
                   "iou": [seg("iou", s, best=0.60 + s / 100) for s in range(3)]},
           "measured": {"regions": {"ConvTransposeNet": [regions(30.0, 10.0)], "UNet": [regions(24.0, 9.5)]},
                        "masks": {"edge_share": 0.2, "flat_share": 0.5, "edge_threshold": 0.3, "flat_threshold": 0.05},
                        "images": VAL, "decodings": {"argmax": {"accuracy": 0.5, "mae_rgb": 20.0},
                                                     "annealed": {"accuracy": 0.45, "mae_rgb": 17.0}},
                        "train_images": TRAIN, "palette": [[0, 0, 0]] * Q},
           "oxford_split": ("official: datasplits.mat trn1/val1/tst1", {"train": 40, "val": 20, "test": 20}),
           "coco": (Path("deeplabv3.pth"), "https://example.invalid/deeplabv3.pth", False),
           "params": {"PoolUpsampleNet": 49000, "ConvTransposeNet": 49000, "UNet": 51000}, "repo": tmp_path,
           "threads": 1}
    out["decode_summary"] = colour_runs["UNet"][0]
    out["measured"]["decode_summary"] = colour_runs["UNet"][0]
    out.update(changes)
    out.setdefault("trained", {f"{s['task']}/{s['run']}": True for s in all_runs(out)})
    return out


def all_runs(c):
    runs = [s for m in c["colour"].values() for s in m] + c["rebalanced"] + c["sweep"]["summaries"]
    return runs + [s for v in c["seg"].values() for s in v]


def write_machines(c, machines):
    """machine.json in each run's results folder: machines[i % len(machines)] for the i-th run."""
    for i, s in enumerate(all_runs(c)):
        folder = Path(c["config"].results_dir) / s["task"] / s["run"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "machine.json").write_text(json.dumps(machines[i % len(machines)]))
