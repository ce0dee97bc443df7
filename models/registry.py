"""The colourisation nets by name: to add one, import its class here and add it to MODELS; the CLI,
prediction and the complexity counts pick it up from there."""

from models.convtransposenet import ConvTransposeNet
from models.poolupsamplenet import PoolUpsampleNet
from models.unet import UNet

MODELS = {"PoolUpsampleNet": PoolUpsampleNet, "ConvTransposeNet": ConvTransposeNet, "UNet": UNet}


def build_model(name: str, **kwargs):
    """The net registered as `name`, built with `kwargs`; a ValueError lists the names when it is unknown."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
