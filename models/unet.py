"""UNet (homework part 3): ConvTransposeNet with two skip connections."""
import torch

from models.blocks import ColourNet, conv_block, down_down_up, up_conv
from models.padding import SameConv2d


class UNet(ColourNet):
    """ConvTransposeNet with two skips: block 4 also sees block 1's output, and the final conv
    also sees the greyscale input (homework part 3)."""

    def __init__(self, *, kernel: int = 3, num_in_channels: int = 1, num_filters: int = 32, num_colours: int = 24):
        super().__init__(kernel, num_in_channels, num_filters, num_colours)
        k, nic, nf, nc = kernel, num_in_channels, num_filters, num_colours
        self.block1, self.block2, self.block3 = down_down_up(nic, nf, k)  # H -> H/2 -> H/4 -> H/2
        self.block4 = conv_block(up_conv(nf + nf, nc, k), nc)  # cat(block3, block1) -> H
        self.block5 = SameConv2d(nc + nic, nc, k)  # cat(block4, input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out1 = self.block1(x)
        out3 = self.block3(self.block2(out1))
        out4 = self.block4(torch.cat([out3, out1], dim=1))
        return self.block5(torch.cat([out4, x], dim=1))
