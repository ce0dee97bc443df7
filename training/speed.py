"""How colorization.py trains fastest on the device it runs on: torch.compile and the memory layout."""
import importlib.util
import os
import shutil

import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_warn

# Fastest by device type. CPU: torch.compile trains an epoch 1.3-1.5x faster than eager
# (benchmarks/results/cpu-colorization.txt), and channels-last made a compiled step slower (measured on
# the 2-core AMD EPYC CPU: UNet 76 vs 70 ms, PoolUpsampleNet 92 vs 87 ms). CUDA: channels-last is the layout
# tensor cores want; neither choice was measured on a GPU here (none was lent).
FASTEST = {"cpu": {"compile": True, "channels_last": False}, "cuda": {"compile": True, "channels_last": True}}


def compile_problem(device):
    """Why torch.compile cannot work on `device` here (a sentence), or None."""
    if device.type not in FASTEST:
        return f"torch.compile is not used on {device.type} devices"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "its GPU backend needs triton, which is not installed"
    compiler = os.environ.get("CXX") or "g++"  # what torch's inductor invokes for CPU code
    if shutil.which(compiler) is None:
        return f"it needs a C++ compiler and {compiler!r} was not found (install g++, or set CXX)"
    return None


class Speed(Callback):
    """At setup: channels-last for the module and torch.compile of its `model` submodule (in place, so
    state-dict keys stay those of the eager net); None means the device type's FASTEST. Where compiling
    cannot work, one warning and eager training. `applied` says what was done."""

    def __init__(self, compile=None, channels_last=None):
        self.compile, self.channels_last = compile, channels_last
        self.applied = {"compile": False, "channels_last": False}

    def setup(self, trainer, pl_module, stage):
        device = trainer.strategy.root_device
        fastest = FASTEST.get(device.type, {"compile": False, "channels_last": False})
        if fastest["channels_last"] if self.channels_last is None else self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
            self.applied["channels_last"] = True
        want = fastest["compile"] if self.compile is None else self.compile
        target = getattr(pl_module, "model", None) if want else None
        if target is None or self.applied["compile"]:
            return
        problem = compile_problem(device)
        if problem:
            rank_zero_warn(f"not compiling the model: {problem}; training runs eagerly (--no-compile hides this)")
            return
        target.compile()
        self.applied["compile"] = True
