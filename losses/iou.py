"""Soft IoU loss for binary (background / flower) segmentation, as the homework defines it.

For one image, with X = predicted flower probability per pixel (softmax of the two logits,
channel 1) and Y = ground-truth flower mask (1 flower, 0 background):

    I = sum(X * Y),   U = sum(X + Y - X * Y),   L = 1 - (I + eps) / (U + eps)

summed over the image's pixels whose target is not `ignore_index` (None: every pixel counts); the
loss is the mean of L over the images of the batch. `eps` (default 1e-6) is added to numerator and
denominator only so that an image with no flower and no predicted flower (I = U = 0), or with every
pixel ignored, gives L = 0 instead of NaN; for any other image it changes L by less than eps / U.
"""
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


def soft_iou_loss(logits, target, ignore_index=None, eps=EPS):
    """The loss above of (N, 2, H, W) logits (channel 1 = flower) and (N, H, W) targets in {0, 1, ignore_index}."""
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"soft_iou_loss expects logits of shape (N, 2, H, W), got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    x = F.softmax(logits, dim=1)[:, 1]
    valid = torch.ones_like(x) if ignore_index is None else (target != ignore_index).to(x.dtype)
    y = (target == 1).to(x.dtype)
    inter = (x * y * valid).sum(dim=(1, 2))
    union = ((x + y - x * y) * valid).sum(dim=(1, 2))
    return (1 - (inter + eps) / (union + eps)).mean()


class SoftIoULoss(nn.Module):
    """Module form of `soft_iou_loss` (same arguments, stored at construction)."""

    def __init__(self, ignore_index=None, eps=EPS):
        super().__init__()
        self.ignore_index, self.eps = ignore_index, eps

    def forward(self, logits, target):
        return soft_iou_loss(logits, target, self.ignore_index, self.eps)

    def count(self, target):
        """The loss is a mean over images (for exact epoch means)."""
        return len(target)

    def extra_repr(self):
        return f"ignore_index={self.ignore_index}, eps={self.eps}"
