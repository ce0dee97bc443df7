"""Class-rebalanced pixel-wise cross-entropy (the weights: color/rebalance.py)."""
import torch
import torch.nn.functional as F

from losses.cross_entropy import CrossEntropy


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
