"""Loss functions."""

from losses.iou import SoftIoULoss, soft_iou_loss

__all__ = ["SoftIoULoss", "soft_iou_loss"]
