"""The losses by name: `make_loss(name, **kwargs)`; an unknown name is refused with the known ones."""
from losses.cross_entropy import CrossEntropy, RebalancedCrossEntropy
from losses.iou import SoftIoULoss

LOSSES = {"ce": CrossEntropy, "rebalanced_ce": RebalancedCrossEntropy, "iou": SoftIoULoss}


def make_loss(name, **kwargs):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
