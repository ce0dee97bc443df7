"""Colourisation models and a name -> constructor registry.

To add a model, import its constructor here and add it to MODELS; `build_model` and the CLIs pick
it up from there.
"""

from models.convtransposenet import ConvTransposeNet
from models.poolupsamplenet import PoolUpsampleNet
from models.unet import UNet

MODELS = {
    "PoolUpsampleNet": PoolUpsampleNet,
    "ConvTransposeNet": ConvTransposeNet,
    "UNet": UNet,
}


def build_model(name: str, **kwargs):
    """Build the model registered as `name` with keyword arguments `kwargs`; ValueError lists the
    registered names when `name` is unknown."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    return constructor(**kwargs)


__all__ = ["MODELS", "build_model", "PoolUpsampleNet", "ConvTransposeNet", "UNet"]
