"""DeepLabV3 (torchvision, COCO-pretrained) with a frozen trunk and a new trainable last layer.

Only `classifier[4]` (the final 1x1 conv, 256 -> num_classes) is trained. Everything before it is
frozen and kept in eval mode, so its output - `features(x)` - is a fixed function of the image;
this is what lets the data module cache features once and train only `head`.
"""

import hashlib
import os
import pickle
import urllib.error
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import segmentation as seg

from errors import UsageError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# backbone name -> (torchvision builder, weights enum member with COCO (VOC labels) weights)
BACKBONES = {
    "resnet101": (seg.deeplabv3_resnet101, seg.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
    "resnet50": (seg.deeplabv3_resnet50, seg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
    "mobilenet_v3_large": (
        seg.deeplabv3_mobilenet_v3_large,
        seg.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
    ),
}
FEATURE_CHANNELS = 256  # output channels of classifier[3] for every backbone above
RANDOM_TRUNK_SEED = 0  # weights=None: the frozen trunk is always this random network (a stable identity)
STANDIN_SUFFIX = ".standin"  # marker file next to a stand-in weights file (models/standin_weights.py)
OUTPUT_STRIDE = {"resnet101": 8, "resnet50": 8, "mobilenet_v3_large": 16}


class FineTunedDeepLabV3(nn.Module):
    """A torchvision DeepLabV3 whose only trainable part is `classifier[4]`.

    Attributes: `model` (the torchvision DeepLabV3, aux_classifier None), `backbone_name`,
    `pretrained` (bool), `mean` / `std` (input normalisation the weights expect), `output_stride`.
    """

    def __init__(self, model: nn.Module, backbone_name: str, pretrained: bool, mean, std, weights_file=None):
        super().__init__()
        self.model = model
        self.weights_file = weights_file  # the pretrained weights file read, or None
        self.backbone_name = backbone_name
        self.pretrained = pretrained
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.output_stride = OUTPUT_STRIDE[backbone_name]

    @property
    def last_layer(self) -> nn.Conv2d:
        """The trainable 1x1 conv (`classifier[4]`)."""
        return self.model.classifier[4]

    def _frozen_modules(self):
        return [self.model.backbone, *list(self.model.classifier)[:4]]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input of `classifier[4]`: backbone -> classifier[0..3]; (N, 256, H/os, W/os)."""
        out = self.model.backbone(x)["out"]
        for layer in self._frozen_modules()[1:]:
            out = layer(out)
        return out

    def head(self, features: torch.Tensor, size) -> torch.Tensor:
        """Logits (N, C, *size) from `features`: classifier[4], then bilinear upsampling exactly as
        torchvision's DeepLabV3.forward does. Features of another dtype (e.g. an fp16 cache) are
        cast to the layer's dtype first."""
        conv = self.last_layer
        logits = conv(features.to(conv.weight.dtype))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W), the same as torchvision's `model(x)["out"]`."""
        return self.head(self.features(x), x.shape[-2:])

    def train(self, mode: bool = True):
        """Only the new layer follows `mode`; the frozen trunk stays in eval mode (BatchNorm
        running statistics never change, the classifier's dropout stays off)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def feature_shape(self, image_size: int) -> tuple[int, int, int]:
        """(256, h, w) of `features` for square images of `image_size`: every stride-2 layer of these
        backbones pads so that it maps n pixels to ceil(n / 2)."""
        side = int(image_size)
        for _ in range(self.output_stride.bit_length() - 1):
            side = -(-side // 2)
        return (FEATURE_CHANNELS, side, side)

    def weights_identity(self) -> dict:
        """What the frozen trunk's values come from: for pretrained weights the file's name, size and
        sha256 (and whether it is a stand-in), for random ones the fixed seed."""
        if self.weights_file is None:
            return {"weights": "random", "seed": RANDOM_TRUNK_SEED}
        path = self.weights_file
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        return {"weights": "coco", "file": os.path.basename(path), "bytes": os.path.getsize(path),
                "sha256": digest.hexdigest(), "standin": os.path.exists(path + STANDIN_SUFFIX)}

    def feature_identity(self) -> dict:
        """Everything about the network that determines `features(x)` for a given input."""
        if not hasattr(self, "_weights_identity"):  # the file is hashed once per model
            self._weights_identity = self.weights_identity()
        return {"backbone": self.backbone_name, **self._weights_identity, "mean": list(self.mean),
                "std": list(self.std), "torchvision_builder": BACKBONES[self.backbone_name][0].__name__}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that require grad (weight and bias of the new layer)."""
        return [p for p in self.parameters() if p.requires_grad]


def _hub_checkpoint_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _load_torchvision_model(builder, weights, num_classes_random: int):
    """Build the torchvision model, turning a failed weights download into a UserError."""
    if weights is None:
        # weights_backbone=None too: no ImageNet download, a fully random network, always the same one
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_TRUNK_SEED)
            return builder(weights=None, weights_backbone=None, num_classes=num_classes_random, aux_loss=False)
    filename = os.path.basename(weights.url)
    folder = _hub_checkpoint_dir()
    try:
        return builder(weights=weights)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(
            f"could not download the pretrained weights {filename} from {weights.url} ({err}); "
            f"download that file yourself and put it in {folder}"
        ) from err
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the pretrained weights file {os.path.join(folder, filename)} is corrupt or incomplete ({reason}); "
            f"delete it and download it again from {weights.url}"
        ) from err


def build_deeplabv3(backbone: str = "resnet101", weights: str | None = "coco",
                    num_classes: int = 2) -> FineTunedDeepLabV3:
    """DeepLabV3 with every parameter frozen, `classifier[4]` replaced by a new trainable
    `nn.Conv2d(256, num_classes, 1)` and no aux_classifier.

    backbone: "resnet101" | "resnet50" | "mobilenet_v3_large".
    weights: "coco" (torchvision COCO_WITH_VOC_LABELS_V1, downloaded to the torch hub cache) or
    None (random initialisation with the fixed seed RANDOM_TRUNK_SEED, with a warning; the new
    layer's initialisation follows the global RNG). Raises UserError when the weights cannot be
    downloaded, naming the file, its URL and the folder to put it in.
    """
    if backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if weights not in ("coco", None):
        raise UsageError(f"unknown weights {weights!r}; use 'coco' or None (random initialisation)")
    builder, coco = BACKBONES[backbone]
    if weights is None:
        warnings.warn(f"DeepLabV3 {backbone} is randomly initialised (weights=None): no pretrained features",
                      stacklevel=2)
        model = _load_torchvision_model(builder, None, num_classes)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        model = _load_torchvision_model(builder, coco, num_classes)
        transform = coco.transforms()
        mean, std = transform.mean, transform.std
    model.aux_classifier = None
    model.requires_grad_(False)
    in_channels = model.classifier[4].in_channels
    model.classifier[4] = nn.Conv2d(in_channels, num_classes, kernel_size=1)  # new, trainable
    weights_file = None if weights is None else os.path.join(_hub_checkpoint_dir(), os.path.basename(coco.url))
    wrapped = FineTunedDeepLabV3(model, backbone, weights is not None, mean, std, weights_file)
    return wrapped.train()
