"""data/batching.py: whole-batch gathers, a training order from (seed, epoch) alone, samplers that shard
exactly under DDP, and the DataModule over tensors."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler, TensorDataset

from data.batching import EpochShuffle, TensorBatches, epoch_seed, keep_batch, make_sampler, tensor_loader
from data.cifar import CIFARHorses, accelerator_device
from data.features import TensorDataModule
from errors import UsageError
from tests.fixtures.cifar import write_cifar_folder


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


def test_one_process_uses_epoch_shuffle_and_order():
    data = range(10)
    train = make_sampler(data, train=True, seed=4)
    assert isinstance(train, EpochShuffle) and train.seed == 4
    assert isinstance(make_sampler(data, train=False), SequentialSampler)
    assert list(make_sampler(data, train=False)) == list(range(10))


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
    data = TensorBatches(torch.arange(8))
    dm = SimpleNamespace(trainer=None, batch_size=2, seed=0)
    assert isinstance(tensor_loader(dm, data, True).sampler, EpochShuffle) and accelerator_device(dm) is None
    sampler = tensor_loader(SimpleNamespace(trainer=fake_trainer(1, 4), batch_size=2, seed=0), data, True).sampler
    assert (sampler.rank, sampler.num_replicas) == (1, 4)
    assert accelerator_device(SimpleNamespace(trainer=fake_trainer(0, 1, "cpu"))) is None


def test_cifar_validation_under_two_ranks_sees_each_image_once(tmp_path):
    write_cifar_folder(tmp_path, n_per_batch=22, horse_every=2)  # 11 val horses
    seen = []
    for rank in range(2):
        dm = CIFARHorses(tmp_path, batch_size=4, download=False)
        dm.trainer = fake_trainer(rank, 2)
        seen += [g for g, _, _ in dm.val_dataloader()]
        assert isinstance(dm.train_dataloader().sampler, DistributedSampler)
    images = lambda t: sorted(img.numpy().tobytes() for img in t)  # noqa: E731  (order-free comparison)
    assert images(torch.cat(seen)) == images(dm.val_set.tensors[0]) and len(dm.val_set) == 11


# ----------------------------------------------------------------------------- EpochShuffle

def test_order_depends_on_seed_and_epoch_only():
    data = list(range(50))
    a, b = EpochShuffle(data, seed=7), EpochShuffle(data, seed=7)
    epochs_a = [list(a) for _ in range(3)]  # without set_epoch the epoch counts up by itself
    torch.manual_seed(123)  # the global RNG plays no part
    b.set_epoch(2)
    assert list(b) == epochs_a[2]
    b.set_epoch(0)
    assert list(b) == epochs_a[0] and sorted(epochs_a[0]) == data
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    assert list(EpochShuffle(data, seed=8)) != epochs_a[0]
    shifted = EpochShuffle(data, seed=0)
    shifted.set_epoch(1)
    assert list(EpochShuffle(data, seed=1)) != list(shifted)  # seeds are mixed, not added to the epoch


def test_epoch_order_is_a_randperm_seeded_from_seed_and_epoch():
    """The order itself, recomputed from its definition: a resumed run depends on it staying the same."""
    sampler = EpochShuffle(range(12), seed=5)
    sampler.set_epoch(3)
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(epoch_seed(5, 3))).tolist()
    assert list(sampler) == expected
    assert epoch_seed(1, 0) != epoch_seed(0, 1)


def test_the_epoch_is_read_when_iteration_starts():
    """Lightning creates the iterator before it calls set_epoch on a resumed run."""
    data = list(range(20))
    sampler = EpochShuffle(data, seed=0)
    iterator = iter(sampler)
    sampler.set_epoch(5)
    expected = EpochShuffle(data, seed=0)
    expected.set_epoch(5)
    assert list(iterator) == list(expected)


# ----------------------------------------------------------------------------- tensor_loader, TensorDataModule

def _tensor_module(n=30, batch_size=4, seed=3):
    x, y = torch.arange(n).float().view(n, 1), torch.arange(n)
    sets = {name: TensorBatches(x + offset, y + offset) for name, offset in (("train", 0), ("val", 100), ("test", 200))}
    return TensorDataModule(sets, batch_size=batch_size, seed=seed, info={"location": "memory"}), sets


def test_loaders_never_touch_the_global_rng():
    dm, sets = _tensor_module()
    state = torch.get_rng_state()
    batches = [b[1].tolist() for b in dm.train_dataloader()]
    list(dm.val_dataloader())
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(b) for b in batches] == [4] * 7 + [2] and sorted(sum(batches, [])) == list(range(30))


def test_tensor_data_module_serves_its_datasets_in_the_documented_order():
    dm, sets = _tensor_module()
    assert dm.val_set is sets["val"] and dm.info == {"location": "memory"}
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochShuffle) and train.sampler.seed == 3 and train.batch_size == 4
    order = EpochShuffle(range(30), seed=3)
    assert [i for _, y in train for i in y.tolist()] == list(order)  # epoch 0 of (seed 3)
    assert [i for _, y in dm.val_dataloader() for i in y.tolist()] == list(range(100, 130))
    assert [i for _, y in dm.test_dataloader() for i in y.tolist()] == list(range(200, 230))


def test_tensor_data_module_shards_evaluation_under_two_ranks():
    seen = []
    for rank in range(2):
        dm, _ = _tensor_module(n=11)
        dm.trainer = fake_trainer(rank, 2)
        seen += [i for _, y in dm.val_dataloader() for i in y.tolist()]
        assert isinstance(dm.train_dataloader().sampler, DistributedSampler)
    assert sorted(seen) == list(range(100, 111))  # each item once over both ranks


def test_tensor_loader_uses_workers_only_when_asked():
    dm, sets = _tensor_module()
    loader = tensor_loader(dm, sets["train"], True, num_workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers
    assert tensor_loader(dm, sets["val"], False).num_workers == 0
