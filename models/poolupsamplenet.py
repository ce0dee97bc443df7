"""PoolUpsampleNet (homework part 1): stride-1 convs, max-pooling to halve, nearest upsampling to double."""
import torch

from models.blocks import ColourNet, conv_block
from models.padding import SameConv2d


class PoolUpsampleNet(ColourNet):
    def __init__(self, *, kernel: int = 3, num_in_channels: int = 1, num_filters: int = 32, num_colours: int = 24):
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
