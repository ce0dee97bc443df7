"""Colour decoding: argmax, and the annealed mean with its two limits."""
import pytest
import torch

from color.decode import annealed_probabilities, decode
from color.palette import load_palette


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(2, 24, 4, 8) * 3


def test_argmax_picks_the_most_likely_palette_colour(logits):
    palette = load_palette()
    rgb = decode(logits, palette, "argmax")
    idx = logits.argmax(1)
    assert rgb.shape == (2, 3, 4, 8)
    assert torch.equal(rgb[1, :, 2, 5], palette[idx[1, 2, 5]])


def test_temperature_to_zero_gives_argmax(logits):
    palette = load_palette()
    assert torch.allclose(decode(logits, palette, "annealed", 1e-4), decode(logits, palette, "argmax"), atol=1e-5)


def test_temperature_one_gives_the_mean_colour(logits):
    palette = load_palette()
    mean = (torch.softmax(logits, 1)[:, :, None] * palette[None, :, :, None, None]).sum(1)
    assert torch.allclose(decode(logits, palette, "annealed", 1.0), mean, atol=1e-6)


def test_annealed_lies_between_and_sums_to_one(logits):
    p = annealed_probabilities(logits, 0.38)
    assert torch.allclose(p.sum(1), torch.ones(2, 4, 8), atol=1e-6)
    # sharper than the plain softmax: the top class gains probability
    assert (p.max(1).values >= torch.softmax(logits, 1).max(1).values - 1e-6).all()


def test_bad_temperature_and_method_are_refused(logits):
    palette = load_palette()
    with pytest.raises(ValueError, match="temperature"):
        decode(logits, palette, "annealed", 0)
    with pytest.raises(ValueError, match="argmax"):
        decode(logits, palette, "median")
