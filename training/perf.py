"""Channels-last memory format for both CLIs: `--channels-last / --no-channels-last`, on by default on CUDA.

Convolutions on GPU tensor cores run in NHWC; with NCHW tensors cuDNN transposes around every conv.
Converting the model's weights once is enough: a convolution whose weight is channels-last returns
channels-last activations, so the layout carries through the network. On a CPU the gain is not
reliable, so the default there is off.
"""
import argparse

import torch
from pytorch_lightning import Callback


def add_perf_args(parser):
    g = parser.add_argument_group("speed")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last (NHWC) memory format for the model; default: on for CUDA, off otherwise")
    return parser


class ChannelsLast(Callback):
    """Converts the LightningModule to channels-last at setup: always (True), never (False), or
    when it trains on CUDA (None). `applied` says what was done."""

    def __init__(self, enabled=None):
        self.enabled = enabled
        self.applied = False

    def setup(self, trainer, pl_module, stage):
        on = self.enabled if self.enabled is not None else trainer.strategy.root_device.type == "cuda"
        if on:
            pl_module.to(memory_format=torch.channels_last)
        self.applied = bool(on)
