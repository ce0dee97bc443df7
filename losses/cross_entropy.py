"""Pixel-wise cross-entropy, plain or class-rebalanced (colourisation and segmentation).

Rebalancing follows Zhang, Isola and Efros, "Colorful Image Colorization" (ECCV 2016), eq. 3: each
pixel's loss is weighted by the weight of its *target* class q,

    L = mean over pixels of  w[q] * (-log softmax(logits)[q]),

divided by the number of pixels, not by the sum of the weights (PyTorch's `weight=` would divide).
The weights themselves (eq. 4) are computed from the training data by color/rebalance.py and kept
in this loss's buffers, so checkpoints, resume and prediction carry them.

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
    """Cross-entropy with each pixel weighted by its target class's weight (eq. 3 above).

    Buffers: `class_weights` w (ones until `set_weights`: the plain cross-entropy) and `prior`, the
    smoothed class distribution they were computed from (zeros until then)."""

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
