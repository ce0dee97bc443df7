"""DataLoaders over tensors in memory: one indexing operation per batch, exact evaluation under DDP.

- `TensorBatches`: a TensorDataset whose `__getitems__` returns a whole batch with one gather per
  tensor (`t[indices]`) instead of N item lookups and a `torch.stack`; with `keep_batch` as the
  loader's collate_fn the batch goes straight to the step. Its tensors may live on the GPU: the
  indices then go over once per batch (a few hundred bytes, pinned, asynchronous), the data never.
- `make_sampler`: in one process a shuffle seeded by (seed, epoch) (data/sampling.py) or in order. Under DDP (world size > 1)
  the training sampler is torch's DistributedSampler (pads by repeating a few items, so every rank
  runs the same number of steps: DDP needs that), and evaluation gets Lightning's
  UnrepeatedDistributedSampler: each item exactly once over all ranks, so validation and test
  metrics, synced by torchmetrics, equal a single-process evaluation. Both are DistributedSamplers,
  which Lightning leaves alone (it only replaces other samplers).
- `distributed_info` / `accelerator_device`: what a DataModule attached to a Trainer needs to know.
"""
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler, SequentialSampler, TensorDataset

from data.sampling import EpochShuffle
from errors import UsageError


class TensorBatches(TensorDataset):
    """A TensorDataset that also serves whole batches: `ds.__getitems__(indices)` = tuple of
    `tensor[indices]`, the batch `default_collate` would have stacked from the items."""

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        device = self.tensors[0].device
        if device.type == "cuda":
            index = index.pin_memory().to(device, non_blocking=True)
        return tuple(t[index] for t in self.tensors)

    def to(self, device):
        """The same data with every tensor on `device` (self when already there)."""
        device = torch.device(device)
        if all(t.device == device for t in self.tensors):
            return self
        return type(self)(*(t.to(device) for t in self.tensors))


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns the batch."""
    return batch


def distributed_info(datamodule):
    """(global rank, world size) of the Trainer the DataModule is attached to; (0, 1) without one."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def accelerator_device(datamodule):
    """The CUDA device this process trains on, or None (no Trainer yet, or not a CUDA run)."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return None
    device = trainer.strategy.root_device
    return device if device.type == "cuda" else None


def make_sampler(dataset, train, rank=0, world_size=1, seed=0):
    """Sampler for `dataset`: shuffled for training, in order for evaluation; sharded over
    `world_size` ranks when there are several (see the module docstring)."""
    if world_size <= 1:
        return EpochShuffle(dataset, seed) if train else SequentialSampler(dataset)
    if train:
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=False)
    if len(dataset) < world_size:
        raise UsageError(f"{len(dataset)} evaluation items cannot give each of {world_size} processes one; "
                         f"use fewer devices")
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
