"""What a person sees in TensorBoard beyond the default scalars: a Custom Scalars layout (train and
val curves in one chart) and image grids enlarged with nearest-neighbour scaling.

`CustomScalars(layout)` writes the layout once per run, at the start of fit, into the run's event
file; TensorBoard's "Custom Scalars" tab then shows one chart per entry. Tags are matched as regular
expressions by TensorBoard, so `chart()` anchors them: "train/loss" must not also pick up
"train/loss_weighted".
"""
import re

import torch.nn.functional as F
from pytorch_lightning import Callback


def chart(*tags):
    """One multi-line chart of exactly these scalar tags."""
    return ["Multiline", [f"^{re.escape(t)}$" for t in tags]]


def colorization_layout(rebalanced=False):
    charts = {"loss: plain cross-entropy (train, val)": chart("train/loss", "val/loss"),
              "pixel accuracy (train, val)": chart("train/acc", "val/acc")}
    if rebalanced:
        charts["loss: rebalanced cross-entropy (train, val)"] = chart("train/loss_weighted", "val/loss_weighted")
    charts["colourfulness of val images (predicted, true)"] = chart("val/colourfulness_pred", "val/colourfulness_true")
    charts["mean absolute RGB error, val (argmax, annealed mean)"] = chart("val/mae_rgb_argmax", "val/mae_rgb_annealed")
    return {"colorization": charts}


def segmentation_layout():
    return {"segmentation": {"loss (train, val)": chart("train/loss", "val/loss"),
                             "val IoU (mIoU, flower)": chart("val/miou", "val/iou_flower")}}


LAYOUTS = {"colorization": colorization_layout, "segmentation": segmentation_layout}


class CustomScalars(Callback):
    """Writes a Custom Scalars layout ({category: {title: ["Multiline", [tag regexes]]}}) at fit start."""

    def __init__(self, layout):
        self.layout = layout

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero and trainer.logger is not None and hasattr(trainer.logger.experiment,
                                                                             "add_custom_scalars"):
            trainer.logger.experiment.add_custom_scalars(self.layout)


def custom_scalars(task, **kwargs):
    """The CustomScalars callback of `task` ("colorization" or "segmentation")."""
    return CustomScalars(LAYOUTS[task](**kwargs))


def enlarge(image, factor):
    """(C, H, W) image -> (C, factor*H, factor*W), each pixel a factor x factor block (nearest neighbour)."""
    if factor == 1:
        return image
    return F.interpolate(image[None].float(), scale_factor=factor, mode="nearest")[0].to(image.dtype)

