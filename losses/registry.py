"""The losses a run chooses by name (segmentation.py's --loss, report.py's runs): `make_loss(name, **kwargs)`;
an unknown name is refused with the known ones. The rebalanced cross-entropy is not chosen by name but by
colorization.py's --rebalance LAMBDA (losses/rebalanced.py)."""
from losses.cross_entropy import CrossEntropy
from losses.iou import SoftIoULoss

LOSSES = {"ce": CrossEntropy, "iou": SoftIoULoss}


def make_loss(name, **kwargs):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
