"""Pixel-wise cross-entropy, plain or class-rebalanced (the weights: color/rebalance.py).

Every loss here has `terms(logits, target) -> (plain CE, the loss optimised)` from one log-softmax,
and `count(target)`: how many items its mean is over (for exact epoch means).
"""
import torch
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


class RebalancedCrossEntropy(CrossEntropy):
    """Zhang et al. 2016, eq. 3: mean over pixels of w[target] * CE, divided by the number of pixels, not by
    the sum of the weights (as PyTorch's `weight=` would). Buffers, so checkpoints carry them: `class_weights`
    (ones until `set_weights`) and `prior`, the smoothed distribution they came from (zeros until then)."""

    def __init__(self, num_classes):
        super().__init__()
        self.register_buffer("class_weights", torch.ones(num_classes))
        self.register_buffer("prior", torch.zeros(num_classes))

    @property
    def weights_set(self):
        return bool(self.prior.sum() > 0)

    def set_weights(self, weights, prior):
        self.class_weights.copy_(torch.as_tensor(weights))
        self.prior.copy_(torch.as_tensor(prior))

    def terms(self, logits, target):
        nll = F.cross_entropy(logits, target, reduction="none")
        return nll.mean(), (self.class_weights[target] * nll).mean()
