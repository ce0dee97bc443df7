"""Shapes, argument checks, skip connections and a 4-image overfit for the colourisation nets."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.convtransposenet import ConvTransposeNet
from models.padding import SameConv2d, padding_for
from models.poolupsamplenet import PoolUpsampleNet
from models.registry import MODELS, build_model
from models.unet import UNet

KERNELS = range(1, 8)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_output_shape_every_kernel_batch_and_size(name, kernel):
    model = build_model(name, kernel=kernel, num_filters=4, num_colours=5)
    for batch, (h, w) in [(1, (32, 32)), (2, (64, 48)), (5, (8, 12))]:
        out = model(torch.randn(batch, 1, h, w))
        assert out.shape == (batch, 5, h, w)


@pytest.mark.parametrize("name", list(MODELS))
def test_defaults_and_several_input_channels(name):
    assert build_model(name)(torch.randn(2, 1, 32, 32)).shape == (2, 24, 32, 32)
    model = build_model(name, num_in_channels=3, num_filters=6, num_colours=7)
    assert model(torch.randn(2, 3, 16, 20)).shape == (2, 7, 16, 20)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [(30, 32), (32, 34), (33, 33), (2, 4)])
def test_size_not_multiple_of_4_is_value_error(name, size):
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*multiples of 4"):
        build_model(name, num_filters=4)(torch.randn(1, 1, *size))


@pytest.mark.parametrize("name", list(MODELS))
def test_wrong_channels_or_rank_is_value_error(name):
    model = build_model(name, num_filters=4)
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(1, 32, 32))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("arg", ["kernel", "num_in_channels", "num_filters", "num_colours"])
@pytest.mark.parametrize("value", [0, -1, 2.0])
def test_bad_constructor_args_are_value_errors(name, arg, value):
    with pytest.raises(ValueError, match=arg):
        build_model(name, **{arg: value})


def test_build_model_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="PoolUpsampleNet, ConvTransposeNet, UNet"):
        build_model("ResNet")
    assert type(build_model("UNet", kernel=5)) is UNet
    assert MODELS == {"PoolUpsampleNet": PoolUpsampleNet, "ConvTransposeNet": ConvTransposeNet,
                      "UNet": UNet}


def test_pool_upsample_structure():
    model = PoolUpsampleNet(kernel=3, num_in_channels=1, num_filters=8, num_colours=6)
    assert [type(m) for m in model.block1] == [SameConv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in model.block3] == [SameConv2d, nn.Upsample, nn.BatchNorm2d, nn.ReLU]
    assert model.block3.upsample.mode == "nearest" and model.block3.upsample.scale_factor == 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (1, 8, (1, 1)), (8, 16, (1, 1)), (16, 8, (1, 1)), (8, 6, (1, 1)), (6, 6, (1, 1))]


@pytest.mark.parametrize("cls", [ConvTransposeNet, UNet])
def test_conv_transpose_structure(cls):
    model = cls(kernel=4, num_in_channels=1, num_filters=8, num_colours=6)
    kinds = [(type(b.conv), b.conv.stride) for b in (model.block1, model.block2, model.block3,
                                                      model.block4)]
    assert kinds == [(nn.Conv2d, (2, 2))] * 2 + [(nn.ConvTranspose2d, (2, 2))] * 2
    assert not any(isinstance(m, (nn.MaxPool2d, nn.Upsample)) for m in model.modules())
    assert model.block5.stride == (1, 1)


def _capture_inputs(module, store, key):
    return module.register_forward_hook(lambda m, inp, out: store.__setitem__(key, (inp[0], out)))


def test_unet_block4_gets_block1_skip_and_final_conv_gets_input():
    nic, nf, nc = 2, 6, 5
    model = UNet(kernel=3, num_in_channels=nic, num_filters=nf, num_colours=nc)
    seen = {}
    for key in ("block1", "block3", "block4", "block5"):
        _capture_inputs(getattr(model, key), seen, key)
    x = torch.randn(3, nic, 16, 24)
    model(x)
    block4_in = seen["block4"][0]
    assert block4_in.shape[1] == 2 * nf
    assert torch.equal(block4_in[:, :nf], seen["block3"][1])
    assert torch.equal(block4_in[:, nf:], seen["block1"][1])
    final_in = seen["block5"][0]
    assert final_in.shape[1] == nc + nic
    assert torch.equal(final_in[:, :nc], seen["block4"][1])
    assert torch.equal(final_in[:, nc:], x)


def test_unet_final_conv_grey_weights_change_output():
    model = UNet(num_filters=4).eval()
    x = torch.randn(1, 1, 16, 16)
    before = model(x)
    with torch.no_grad():
        model.block5.weight[:, -1:] += 1.0  # only the taps that read the greyscale input
    assert not torch.allclose(model(x), before)


@pytest.mark.parametrize("kernel", [2, 4, 6])
def test_same_conv_even_kernel_matches_pytorch_same_padding(kernel):
    conv = SameConv2d(3, 4, kernel)
    x = torch.randn(2, 3, 8, 12)
    with warnings.catch_warnings():  # padding="same" warns (once) on even kernels
        warnings.simplefilter("ignore")
        expected = F.conv2d(x, conv.weight, conv.bias, padding="same")
    assert torch.allclose(conv(x), expected, atol=1e-6)


def test_padding_values_homework_1_2_4():
    assert padding_for(3)[:3] == (1, 1, 1)
    assert padding_for(4)[:3] == (1, 1, 0)
    assert padding_for(5)[:3] == (2, 2, 1)
    assert padding_for(5).conv == 2 and padding_for(4).output_padding == 0
    assert padding_for(4).same == (1, 2) and padding_for(3).same == (1, 1)
    with pytest.raises(ValueError, match="kernel"):
        padding_for(0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", [2, 4, 10, 32])
def test_padding_gives_right_shapes_for_both_conv_kinds(kernel, size):
    pad = padding_for(kernel)
    x = torch.randn(1, 2, size, size + 2)
    down = nn.Conv2d(2, 3, kernel, stride=2, padding=pad.conv)(x)
    assert down.shape[-2:] == (size // 2, size // 2 + 1)
    up = nn.ConvTranspose2d(2, 3, kernel, stride=2, padding=pad.transpose,
                            output_padding=pad.output_padding)(x)
    assert up.shape[-2:] == (2 * size, 2 * size + 4)
    assert SameConv2d(2, 3, kernel)(x).shape[-2:] == x.shape[-2:]


@pytest.mark.parametrize("name", list(MODELS))
def test_channels_last_matches_contiguous(name):
    model = build_model(name, kernel=4, num_filters=4, num_colours=5).eval()
    x = torch.randn(2, 1, 16, 16)
    expected = model(x)
    out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_autocast_bfloat16(name):
    model = build_model(name, num_filters=4, num_colours=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 5, 16, 16) and out.dtype == torch.bfloat16
    out.float().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert len(grads) > 0 and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list(MODELS))
def test_overfits_four_images(name):
    """Greyscale images made of 4x4 blocks of 24 grey levels; the class is the grey level."""
    gen = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 24, (4, 1, 8, 8), generator=gen).float()
    target = F.interpolate(levels, scale_factor=4)[:, 0].long()
    x = target[:, None].float() / 23
    torch.manual_seed(0)
    model = build_model(name)  # default architecture: kernel 3, NF 32, NC 24
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    accuracy = 0.0
    for step in range(1, 301):
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(1) == target).float().mean().item()
            model.train()
            if accuracy > 0.9:
                break
    assert accuracy > 0.9
