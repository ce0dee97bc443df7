"""A shuffling sampler whose order depends only on (seed, epoch), so reruns and resumed runs agree.

PyTorch's RandomSampler draws a fresh seed from the global RNG every epoch, so the order of epoch 3
depends on everything that used the RNG before it. After a resume from a checkpoint that state is
gone. `EpochShuffle` instead permutes with a generator seeded from (seed, epoch): epoch 3 of a
resumed run sees the same batches as epoch 3 of an uninterrupted one.
"""
import numpy as np
import torch
from torch.utils.data import RandomSampler


def epoch_seed(seed, epoch):
    """A 63-bit seed that mixes `seed` and `epoch` (seed 1 / epoch 0 and seed 0 / epoch 1 differ)."""
    # int() first: numpy 1.x refuses uint64 >> int (numpy 2 promotes); the value is the same
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, np.uint64)[0]) >> 1


class EpochShuffle(RandomSampler):
    """Random order per epoch from (seed, epoch) alone.

    Lightning calls `set_epoch(e)` before each training epoch. Without Lightning the epoch counts up by
    itself, so a plain loop still sees a new order every epoch. Used in one process; under DDP
    data/batching.py uses torch's DistributedSampler, which is seeded per epoch the same way.
    """

    def __init__(self, data_source, seed=0):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        # A generator: the epoch is read when the first batch is fetched, after Lightning's set_epoch.
        epoch, self.epoch = self.epoch, self.epoch + 1
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def loader_generator(seed):
    """A private generator for a DataLoader: creating an iterator draws a worker base seed, which
    must never consume the global RNG (a checkpoint restores that state)."""
    return torch.Generator().manual_seed(int(seed) & 0xFFFFFFFF)
