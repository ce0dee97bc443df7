"""Building blocks of the three colourisation nets: greyscale (N, NIC, H, W) -> logits (N, NC, H, W).

Each net is five blocks: four `conv -> [pool | upsample] -> BatchNorm -> ReLU` and a bare conv giving the
per-pixel class logits. All padding comes from `models.padding.padding_for`, so every kernel size (odd or
even) gives an output of the input's size.
"""
from collections import OrderedDict

import torch
from torch import nn

from models.padding import padding_for


def conv_block(conv: nn.Module, out_channels: int, *, pool: bool = False, upsample: bool = False) -> nn.Sequential:
    """`conv -> [MaxPool2d(2)] -> [Upsample(x2, nearest)] -> BatchNorm2d -> ReLU`, named conv / pool / ... / relu."""
    layers = [("conv", conv)]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    if upsample:
        layers.append(("upsample", nn.Upsample(scale_factor=2)))
    layers += [("bn", nn.BatchNorm2d(out_channels)), ("relu", nn.ReLU())]
    return nn.Sequential(OrderedDict(layers))


def down_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    """A stride-2 conv: H x W -> H/2 x W/2 for even H, W."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=padding_for(kernel).conv)


def up_conv(in_channels: int, out_channels: int, kernel: int) -> nn.ConvTranspose2d:
    """A stride-2 transposed conv: H x W -> 2H x 2W."""
    pad = padding_for(kernel)
    return nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=2, padding=pad.transpose,
                              output_padding=pad.output_padding)


class ColourNet(nn.Module):
    """Argument and input-size checks shared by the three nets."""

    def __init__(self, kernel: int, num_in_channels: int, num_filters: int, num_colours: int):
        super().__init__()
        for name, value in [("kernel", kernel), ("num_in_channels", num_in_channels),
                            ("num_filters", num_filters), ("num_colours", num_colours)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        self.kernel, self.num_in_channels, self.num_filters, self.num_colours = (kernel, num_in_channels, num_filters,
                                                                                  num_colours)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (N, num_in_channels, H, W) with H, W multiples of 4."""
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.num_in_channels:
            raise ValueError(f"{name} expects input of shape (N, {self.num_in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % 4 or width % 4:
            raise ValueError(f"{name} cannot take input size {height}x{width}: height and width "
                             "must be multiples of 4 (the net halves and doubles them twice)")

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, num_in_channels={self.num_in_channels}, "
                f"num_filters={self.num_filters}, num_colours={self.num_colours}")


def down_down_up(num_in_channels: int, num_filters: int, kernel: int):
    """Blocks 1-3 of ConvTransposeNet and UNet: two stride-2 convs halve H twice, a transposed conv
    doubles it once: (N, NIC, H, W) -> (N, NF, H/2, W/2) through NF and 2 NF channels."""
    nic, nf, k = num_in_channels, num_filters, kernel
    return (conv_block(down_conv(nic, nf, k), nf),  # H -> H/2
            conv_block(down_conv(nf, 2 * nf, k), 2 * nf),  # -> H/4
            conv_block(up_conv(2 * nf, nf, k), nf))  # -> H/2
