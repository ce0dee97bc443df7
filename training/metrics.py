"""An epoch mean that stays exact under DDP, for the logged losses.

Lightning's `self.log(..., sync_dist=True)` reduces a mean by averaging the running sum and the item
count over the ranks, and the count is an integer tensor whose average is truncated: 11 validation
images on 2 ranks count as 5 + 5, and the epoch loss came out 3.42 instead of 3.11 (first run of
tests/test_ddp.py). With exact evaluation the ranks hold different numbers of items, so the losses
are logged through this Metric instead: float sums, all-reduced by summation by torchmetrics when
the epoch value is computed; nothing is synchronised per step.
"""
import torch
from torchmetrics import Metric


class BatchMean(Metric):
    """Mean of per-batch values weighted by the batch's item count, over everything seen since reset."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value, count):
        """Add a batch whose mean is `value` (a scalar tensor) over `count` items."""
        self.total += value.detach().float() * count
        self.count += count

    def compute(self):
        return self.total / self.count
