"""DataLoaders over tensors in memory: one gather per batch, a training order from (seed, epoch) alone,
and exact evaluation under DDP."""
import numpy as np
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, TensorDataset

from errors import UsageError


class TensorBatches(TensorDataset):
    """A TensorDataset whose `__getitems__(indices)` is the batch, one gather per tensor instead of N lookups
    and a stack (with `keep_batch` as collate_fn); for tensors on the GPU only the indices travel."""

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        device = self.tensors[0].device
        if device.type == "cuda":
            index = index.pin_memory().to(device, non_blocking=True)
        return tuple(t[index] for t in self.tensors)

    def to(self, device):
        device = torch.device(device)
        if all(t.device == device for t in self.tensors):
            return self
        return type(self)(*(t.to(device) for t in self.tensors))


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns the batch."""
    return batch


def epoch_seed(seed, epoch):
    """A 63-bit seed that mixes `seed` and `epoch` (seed 1 / epoch 0 and seed 0 / epoch 1 differ)."""
    # int() first: numpy 1.x refuses uint64 >> int (numpy 2 promotes); the value is the same
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, np.uint64)[0]) >> 1


class EpochShuffle(RandomSampler):
    """Random order per epoch from (seed, epoch) alone: RandomSampler's depends on the global RNG, whose state
    a resume loses. Lightning calls `set_epoch(e)` before each epoch; without it the epoch counts up."""

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


def make_sampler(dataset, train, rank=0, world_size=1, seed=0):
    """Shuffled for training, in order for evaluation. Under DDP, training pads by repeating a few items (every
    rank runs the same steps) and evaluation sees each item once over all ranks: single-process metrics."""
    if world_size <= 1:
        return EpochShuffle(dataset, seed) if train else SequentialSampler(dataset)
    if train:
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=False)
    if len(dataset) < world_size:
        raise UsageError(f"{len(dataset)} evaluation items cannot give each of {world_size} processes one; "
                         f"use fewer devices")
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)


def tensor_loader(datamodule, dataset, train, num_workers=0, pin_memory=False):
    """The DataLoader of a dataset that serves whole batches (`__getitems__`): the sampler above, the
    DataModule's batch size and seed, and a private generator, since creating an iterator draws a
    worker base seed that must never consume the global RNG (a checkpoint restores that state)."""
    trainer = getattr(datamodule, "trainer", None)
    rank, world_size = (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)
    return DataLoader(dataset, batch_size=datamodule.batch_size, collate_fn=keep_batch,
                      sampler=make_sampler(dataset, train, rank, world_size, datamodule.seed),
                      generator=torch.Generator().manual_seed(int(datamodule.seed) & 0xFFFFFFFF),
                      num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory)
