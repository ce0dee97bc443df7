"""EpochShuffle: the training order of epoch e depends on (seed, e) only."""
import torch
from torch.utils.data import DataLoader

from data.batching import make_sampler
from data.sampling import EpochShuffle, loader_generator


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


def test_the_epoch_is_read_when_iteration_starts():
    """Lightning creates the iterator before it calls set_epoch on a resumed run."""
    data = list(range(20))
    sampler = EpochShuffle(data, seed=0)
    iterator = iter(sampler)
    sampler.set_epoch(5)
    expected = EpochShuffle(data, seed=0)
    expected.set_epoch(5)
    assert list(iterator) == list(expected)


def test_loaders_never_touch_the_global_rng():
    data = torch.arange(30)
    loader = DataLoader(data, batch_size=4, sampler=make_sampler(data, train=True, seed=3), generator=loader_generator(3))
    assert isinstance(loader.sampler, EpochShuffle)
    state = torch.get_rng_state()
    batches = [b.tolist() for b in loader]
    list(DataLoader(data, batch_size=4, sampler=make_sampler(data, train=False), generator=loader_generator(3)))
    assert torch.equal(torch.get_rng_state(), state)
    assert sorted(sum(batches, [])) == list(range(30))
