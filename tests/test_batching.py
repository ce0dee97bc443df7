"""data/batching.py: whole-batch gathers, and samplers that shard exactly under DDP."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, TensorDataset

from data.batching import TensorBatches, accelerator_device, distributed_info, keep_batch, make_sampler
from data.cifar import CIFARHorses
from tests.fixtures.cifar import write_cifar_folder
from errors import UsageError


def fake_trainer(rank, world_size, device="cpu"):
    """Just what the DataModules read from a Trainer."""
    return SimpleNamespace(global_rank=rank, world_size=world_size,
                           strategy=SimpleNamespace(root_device=torch.device(device)))


def test_getitems_gives_the_batch_default_collate_would_stack():
    x, y = torch.randn(23, 1, 4, 4), torch.randint(0, 5, (23, 4, 4))
    fast = DataLoader(TensorBatches(x, y), batch_size=5, sampler=SequentialSampler(range(23)), collate_fn=keep_batch)
    slow = DataLoader(TensorDataset(x, y), batch_size=5)
    pairs = list(zip(fast, slow))
    assert len(pairs) == 5 and pairs[-1][0][0].shape[0] == 3  # last partial batch kept
    for (fx, fy), (sx, sy) in pairs:
        assert torch.equal(fx, sx) and torch.equal(fy, sy)
    ds = TensorBatches(x, y)
    assert ds.to("cpu") is ds and torch.equal(ds.__getitems__([4, 1])[0], x[[4, 1]])


def test_one_process_uses_the_plain_samplers():
    data = range(10)
    assert isinstance(make_sampler(data, train=True), RandomSampler)
    assert isinstance(make_sampler(data, train=False), SequentialSampler)


@pytest.mark.parametrize("n, world", [(11, 2), (10, 3), (7, 4)])
def test_evaluation_shards_cover_every_item_exactly_once(n, world):
    shards = [list(make_sampler(range(n), train=False, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(isinstance(make_sampler(range(n), False, r, world), DistributedSampler) for r in range(world))


def test_training_shards_are_equal_sized_and_reshuffled_each_epoch():
    samplers = [make_sampler(range(11), train=True, rank=r, world_size=2, seed=3) for r in range(2)]
    first = [list(s) for s in samplers]
    assert len(first[0]) == len(first[1]) == 6  # padded: DDP needs the same number of steps on every rank
    assert set(first[0]) | set(first[1]) == set(range(11))
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != first


def test_too_few_items_for_the_processes_is_a_clear_error():
    with pytest.raises(UsageError, match="fewer devices"):
        make_sampler(range(2), train=False, rank=0, world_size=3)


def test_trainer_facts_default_to_one_cpu_process():
    dm = SimpleNamespace(trainer=None)
    assert distributed_info(dm) == (0, 1) and accelerator_device(dm) is None
    assert distributed_info(SimpleNamespace(trainer=fake_trainer(1, 4))) == (1, 4)
    assert accelerator_device(SimpleNamespace(trainer=fake_trainer(0, 1, "cpu"))) is None


def test_cifar_validation_under_two_ranks_sees_each_image_once(tmp_path):
    write_cifar_folder(tmp_path, n_per_batch=22, horse_every=2)  # 11 val horses
    seen = []
    for rank in range(2):
        dm = CIFARHorses(tmp_path, batch_size=4, download=False)
        dm.trainer = fake_trainer(rank, 2)
        seen += [g for g, _ in dm.val_dataloader()]
        assert isinstance(dm.train_dataloader().sampler, DistributedSampler)
    images = lambda t: sorted(img.numpy().tobytes() for img in t)  # noqa: E731  (order-free comparison)
    assert images(torch.cat(seen)) == images(dm.val_set.tensors[0]) and len(dm.val_set) == 11
