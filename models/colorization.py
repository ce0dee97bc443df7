"""The three colourisation nets of the homework: greyscale (N, NIC, H, W) -> logits (N, NC, H, W).

Each net is five blocks; blocks 1-4 are `conv -> [pool | upsample] -> BatchNorm -> ReLU` and block 5
is a bare conv producing the per-pixel class logits. Two halvings and two doublings mean H and W
must be multiples of 4. All padding comes from `models.padding.padding_for`, so every kernel size
(odd or even) gives an output of the input's size.
"""

from collections import OrderedDict

import torch
from torch import nn

from models.padding import SameConv2d, padding_for


def conv_block(conv: nn.Module, out_channels: int, *, pool: bool = False,
               upsample: bool = False) -> nn.Sequential:
    """Return `conv -> [MaxPool2d(2)] -> [Upsample(x2, nearest)] -> BatchNorm2d -> ReLU` with the
    layers named conv / pool / upsample / bn / relu."""
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


class _ColourNet(nn.Module):
    """Argument and input-size checks shared by the three nets."""

    def __init__(self, kernel: int, num_in_channels: int, num_filters: int, num_colours: int):
        super().__init__()
        for name, value in [("kernel", kernel), ("num_in_channels", num_in_channels),
                            ("num_filters", num_filters), ("num_colours", num_colours)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, "
                                 f"got {value!r}")
        self.kernel = kernel
        self.num_in_channels = num_in_channels
        self.num_filters = num_filters
        self.num_colours = num_colours

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (N, num_in_channels, H, W) with H, W multiples of 4."""
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.num_in_channels:
            raise ValueError(f"{name} expects input of shape (N, {self.num_in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % 4 or width % 4:
            raise ValueError(f"{name} cannot take input size {height}x{width}: height and width "
                             "must be multiples of 4 (the net halves and doubles them twice)")

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, num_in_channels={self.num_in_channels}, "
                f"num_filters={self.num_filters}, num_colours={self.num_colours}")


class PoolUpsampleNet(_ColourNet):
    """Stride-1 convs; MaxPool2d halves, nearest Upsample doubles (homework part 1)."""

    def __init__(self, *, kernel: int = 3, num_in_channels: int = 1, num_filters: int = 32,
                 num_colours: int = 24):
        super().__init__(kernel, num_in_channels, num_filters, num_colours)
        k, nic, nf, nc = kernel, num_in_channels, num_filters, num_colours
        self.block1 = conv_block(SameConv2d(nic, nf, k), nf, pool=True)  # H -> H/2
        self.block2 = conv_block(SameConv2d(nf, 2 * nf, k), 2 * nf, pool=True)  # -> H/4
        self.block3 = conv_block(SameConv2d(2 * nf, nf, k), nf, upsample=True)  # -> H/2
        self.block4 = conv_block(SameConv2d(nf, nc, k), nc, upsample=True)  # -> H
        self.block5 = SameConv2d(nc, nc, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.block5(self.block4(self.block3(self.block2(self.block1(x)))))


class ConvTransposeNet(_ColourNet):
    """Stride-2 convs halve, stride-2 transposed convs double (homework part 2)."""

    def __init__(self, *, kernel: int = 3, num_in_channels: int = 1, num_filters: int = 32,
                 num_colours: int = 24):
        super().__init__(kernel, num_in_channels, num_filters, num_colours)
        k, nic, nf, nc = kernel, num_in_channels, num_filters, num_colours
        self.block1 = conv_block(down_conv(nic, nf, k), nf)  # H -> H/2
        self.block2 = conv_block(down_conv(nf, 2 * nf, k), 2 * nf)  # -> H/4
        self.block3 = conv_block(up_conv(2 * nf, nf, k), nf)  # -> H/2
        self.block4 = conv_block(up_conv(nf, nc, k), nc)  # -> H
        self.block5 = SameConv2d(nc, nc, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.block5(self.block4(self.block3(self.block2(self.block1(x)))))


class UNet(_ColourNet):
    """ConvTransposeNet with two skips: block 4 also sees block 1's output, and the final conv
    also sees the greyscale input (homework part 3)."""

    def __init__(self, *, kernel: int = 3, num_in_channels: int = 1, num_filters: int = 32,
                 num_colours: int = 24):
        super().__init__(kernel, num_in_channels, num_filters, num_colours)
        k, nic, nf, nc = kernel, num_in_channels, num_filters, num_colours
        self.block1 = conv_block(down_conv(nic, nf, k), nf)  # H -> H/2
        self.block2 = conv_block(down_conv(nf, 2 * nf, k), 2 * nf)  # -> H/4
        self.block3 = conv_block(up_conv(2 * nf, nf, k), nf)  # -> H/2
        self.block4 = conv_block(up_conv(nf + nf, nc, k), nc)  # cat(block3, block1) -> H
        self.block5 = SameConv2d(nc + nic, nc, k)  # cat(block4, input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out1 = self.block1(x)
        out3 = self.block3(self.block2(out1))
        out4 = self.block4(torch.cat([out3, out1], dim=1))
        return self.block5(torch.cat([out4, x], dim=1))
