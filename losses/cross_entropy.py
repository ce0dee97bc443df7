"""Pixel-wise cross-entropy.

It and its rebalanced form (losses/rebalanced.py) have `terms(logits, target) -> (plain CE, the loss
optimised)` from one log-softmax; every loss in losses/ has `count(target)`: how many items its mean is
over (for exact epoch means).
"""
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    """Mean cross-entropy over the pixels whose target is not `ignore_index` (None: all pixels)."""

    def __init__(self, ignore_index=None):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        return self.terms(logits, target)[1]

    def terms(self, logits, target):
        loss = F.cross_entropy(logits, target, ignore_index=-100 if self.ignore_index is None else self.ignore_index)
        return loss, loss

    def count(self, target):
        return target.numel() if self.ignore_index is None else int((target != self.ignore_index).sum())
