"""Padding that keeps every colourisation net shape-preserving for any kernel size.

All three nets take their padding from `padding_for`, so the answers to homework question 1.2.4
(kernel 3, 4, 5) live in one place:

    kernel  strided conv  transposed conv  output_padding
      3          1              1                1
      4          1              1                0
      5          2              2                1

Why these values (H even, stride 2, p = (k-1)//2):
- strided conv: floor((H + 2p - k) / 2) + 1 = H/2 for odd k (2p = k-1) and even k (2p = k-2);
- transposed conv: (H-1)*2 - 2p + k + output_padding = 2H - 1 + output_padding for odd k and
  2H + output_padding for even k, hence output_padding = 1 for odd k and 0 for even k.
- stride-1 "same" conv: needs k-1 zeros in total per dimension, which is odd for even k, so the
  padding is asymmetric: (k-1)//2 before, k//2 after (PyTorch's own `padding="same"` splits it the
  same way, but warns on even kernels; `SameConv2d` pads the one extra row/column explicitly).
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Padding(NamedTuple):
    """Padding for one kernel size; see the module docstring for the derivation."""

    conv: int  # stride-2 nn.Conv2d: H -> H/2
    transpose: int  # stride-2 nn.ConvTranspose2d: H -> 2H ...
    output_padding: int  # ... together with this output_padding
    same: tuple[int, int]  # stride-1 conv: (before, after) zeros per spatial dimension


def padding_for(kernel: int) -> Padding:
    """Return the padding that makes stride-2 convs halve, stride-2 transposed convs double and
    stride-1 convs keep an even-sized input, for a square kernel of size `kernel` (>= 1)."""
    if kernel < 1:
        raise ValueError(f"kernel size must be at least 1, got {kernel}")
    half = (kernel - 1) // 2
    return Padding(conv=half, transpose=half, output_padding=kernel % 2, same=(half, kernel // 2))


class SameConv2d(nn.Conv2d):
    """A stride-1 nn.Conv2d whose output has the input's height and width for any kernel size.

    The symmetric part of the padding is the conv's own `padding`; an even kernel needs one more
    zero row and column after (bottom/right), added with F.pad (a no-op copy is avoided for odd k).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        before, after = padding_for(kernel).same
        super().__init__(in_channels, out_channels, kernel, stride=1, padding=before)
        self.extra = after - before  # 0 for odd kernels, 1 for even ones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra:
            x = F.pad(x, (0, self.extra, 0, self.extra))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", extra_pad_after={self.extra}" if self.extra else "")
