"""segmentation.py's numbers against numbers recomputed here (tests/segeval.py): mIoU and flower IoU
from a hand-counted confusion, the soft IoU loss by its formula, the test split scored with the best
checkpoint, and the --no-feature-cache, --augment and --unlabelled background paths end to end.

The CLI runs in this process (tests.clirun.run_main) on the tiny Oxford17 fixture (split 1: 12 train,
6 val, 6 test images) with a random frozen MobileNetV3 trunk at 64 px; each run takes seconds.
"""
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import segmentation
from data.oxford17 import Oxford17
from tests import segeval
from tests.clirun import run_main, summary
from tests.fixtures.oxford17 import write_oxford17

SIZE, BATCH = 64, 4
FAST = ["--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", SIZE, "--batch-size", BATCH,
        "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    return write_oxford17(tmp_path_factory.mktemp("oxford17"))


def train(flowers, tmp_path, *flags, run="run"):
    """Run segmentation.py in process; returns its summary."""
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--run-name", run]
    code, _, err = run_main(segmentation.main, [*FAST, "--data-dir", flowers, *out, *flags])
    assert code == 0, err[-3000:]
    return summary(tmp_path / "results", "segmentation", run)


class StepSpy:
    """Records every training batch (inputs, masks), the new layer's weights before the step, and
    the loss the step returned."""

    def __init__(self, monkeypatch):
        self.steps = []
        real = segmentation.SegmentationModule.training_step

        def spy(module, batch, batch_idx):
            x, mask = batch
            layer = module.model.last_layer
            record = {"epoch": module.current_epoch, "x": x.detach().clone(), "mask": mask.clone(),
                      "cached": module.cached, "weight": layer.weight.detach().clone(),
                      "bias": layer.bias.detach().clone()}
            loss = real(module, batch, batch_idx)
            record["loss"] = loss.item()
            self.steps.append(record)
            return loss

        monkeypatch.setattr(segmentation.SegmentationModule, "training_step", spy)


def head_logits(step, size):
    """Logits of the new 1x1 layer on cached features, by hand: W x + b, then bilinear upsampling."""
    w = step["weight"][:, :, 0, 0]
    logits = torch.einsum("nchw,kc->nkhw", step["x"], w) + step["bias"].view(1, -1, 1, 1)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- the metric path

def test_miou_and_flower_iou_equal_a_hand_counted_confusion(flowers):
    """Predictions we control (flower where the normalised red channel exceeds -0.5) fed through the
    module's val and test metric path, in batches of 4 (6 images: batches of 4 and 2)."""
    dm = Oxford17(data_dir=flowers, image_size=SIZE, batch_size=BATCH, download=False)
    module = segmentation.SegmentationModule(backbone="mobilenet_v3_large", weights=None, image_size=SIZE)
    module._logits = lambda x, size, cached: torch.stack([torch.full_like(x[:, 0], -0.5), x[:, 0]], dim=1)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    got = {**trainer.validate(module, datamodule=dm, verbose=False)[0],
           **trainer.test(module, datamodule=dm, verbose=False)[0]}
    for stage, split in (("val", "val"), ("test", "test")):
        images, masks = segeval.load_split(flowers, split, SIZE)
        preds = (images[:, 0] > -0.5).numpy().astype(np.int64)
        want = segeval.iou_from_confusion(preds, masks)
        # the fixture must tell the right answer from the usual wrong ones: a mean of batch values,
        # the last batch alone, background's IoU for the flower's, a micro average
        batches = [segeval.iou_from_confusion(preds[i:i + BATCH], masks[i:i + BATCH]) for i in (0, BATCH)]
        wrong = [np.mean([b["miou"] for b in batches]), np.mean([b[1] for b in batches]), batches[-1]["miou"],
                 batches[-1][1], want[0], np.mean(preds[masks != 255] == masks[masks != 255])]
        assert min(abs(w - v) for w in wrong for v in (want[1], want["miou"])) > 1e-3 and want[1] > 0.1
        assert (masks == 255).any()
        assert got[f"{stage}/miou"] == pytest.approx(want["miou"], abs=1e-6), stage
        assert got[f"{stage}/iou_flower"] == pytest.approx(want[1], abs=1e-6), stage
