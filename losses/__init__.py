"""The losses by name: `make_loss(name, **kwargs)`; an unknown name is refused with the known ones.

- "ce": pixel cross-entropy (losses/cross_entropy.py), optionally skipping an ignore label;
- "rebalanced_ce": cross-entropy with class weights (Zhang et al. 2016; weights from color/rebalance.py);
- "iou": the homework's soft IoU loss (losses/iou.py).
"""
from losses.cross_entropy import CrossEntropy, RebalancedCrossEntropy
from losses.iou import SoftIoULoss

LOSSES = {"ce": CrossEntropy, "rebalanced_ce": RebalancedCrossEntropy, "iou": SoftIoULoss}


def make_loss(name, **kwargs):
    """The loss registered as `name`, built with `kwargs`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
