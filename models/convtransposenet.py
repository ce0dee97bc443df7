"""ConvTransposeNet (homework part 2): stride-2 convs halve, stride-2 transposed convs double."""
import torch

from models.blocks import ColourNet, conv_block, down_down_up, up_conv
from models.padding import SameConv2d


class ConvTransposeNet(ColourNet):
    def __init__(self, *, kernel: int = 3, num_in_channels: int = 1, num_filters: int = 32, num_colours: int = 24):
        super().__init__(kernel, num_in_channels, num_filters, num_colours)
        k, nic, nf, nc = kernel, num_in_channels, num_filters, num_colours
        self.block1, self.block2, self.block3 = down_down_up(nic, nf, k)  # H -> H/2 -> H/4 -> H/2
        self.block4 = conv_block(up_conv(nf, nc, k), nc)  # -> H
        self.block5 = SameConv2d(nc, nc, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.block5(self.block4(self.block3(self.block2(self.block1(x)))))
