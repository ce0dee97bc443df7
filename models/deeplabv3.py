"""DeepLabV3 (torchvision, COCO-pretrained) with a frozen trunk and a new trainable last layer.

Only `classifier[4]` (the final 1x1 conv) is trained. Everything before it is frozen and kept in eval mode,
so `features(x)` is a fixed function of the image: the features can be computed once, and a checkpoint
holds the head alone plus the trunk's identity instead of 159 MB of frozen weights. The COCO weights are
read with `weights_only=True`: a file placed by hand in `$TORCH_HOME/hub/checkpoints` cannot run code.
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

# backbone name -> (torchvision builder, weights enum member with COCO (VOC labels) weights)
BACKBONES = {
    "resnet101": (seg.deeplabv3_resnet101, seg.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
    "resnet50": (seg.deeplabv3_resnet50, seg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
    "mobilenet_v3_large": (seg.deeplabv3_mobilenet_v3_large,
                           seg.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
}
WEIGHTS = ("coco", "none")  # "none": a random frozen trunk, always the same one (RANDOM_TRUNK_SEED)
FEATURE_CHANNELS = 256  # output channels of classifier[3] for every backbone above
RANDOM_TRUNK_SEED = 0
STANDIN_SUFFIX = ".standin"  # marker file next to a stand-in weights file (models/standin_weights.py)
OUTPUT_STRIDE = {"resnet101": 8, "resnet50": 8, "mobilenet_v3_large": 16}
STANDIN_HINT = ("or, offline, write a stand-in with `python -m models.standin_weights` (see README), "
                "or use --weights none")


def sha256_of_file(path, chunk=1 << 22):
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_path(backbone):
    """Where torchvision keeps (and looks for) the COCO weights of `backbone`."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(BACKBONES[backbone][1].url))


class FineTunedDeepLabV3(nn.Module):
    """A torchvision DeepLabV3 (`model`, no aux_classifier) whose only trainable part is `classifier[4]`;
    `mean` / `std`: the input normalisation the weights expect; `weights_file`: the file read, or None."""

    def __init__(self, model: nn.Module, backbone_name: str, weights: str, weights_file=None, channels_last=True):
        super().__init__()
        self.model, self.backbone_name, self.weights, self.weights_file = model, backbone_name, weights, weights_file
        transform = BACKBONES[backbone_name][1].transforms()  # torchvision's constants; nothing is downloaded
        self.mean, self.std = tuple(float(m) for m in transform.mean), tuple(float(s) for s in transform.std)
        self.output_stride = OUTPUT_STRIDE[backbone_name]
        self._identity = None
        # Channels-last, the frozen convolutions run 1.26x (2026-12-03) and 1.47x (Intel Xeon, 2026-12-04:
        # benchmarks/results/cpu-trunk-layout-xeon-2026-12-04.txt) as fast on the 2-core CPUs here, with the
        # same features to float32 rounding; the trainable layer and the state-dict keys are unchanged.
        if channels_last:
            for module in self._frozen_modules():
                module.to(memory_format=torch.channels_last)

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
        torchvision's DeepLabV3.forward does."""
        conv = self.last_layer
        logits = conv(features.to(conv.weight.dtype))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W), the same as torchvision's `model(x)["out"]`."""
        return self.head(self.features(x), x.shape[-2:])

    def train(self, mode: bool = True):
        """Only the new layer follows `mode`; the frozen trunk stays in eval mode (BatchNorm running
        statistics never change, dropout stays off)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def feature_shape(self, image_size: int) -> tuple[int, int, int]:
        """(256, h, w) of `features` for square images of `image_size`: every stride-2 layer of these
        backbones pads so that it maps n pixels to ceil(n / 2), so the trunk maps them to ceil(n / output_stride)."""
        side = -(-int(image_size) // self.output_stride)
        return (FEATURE_CHANNELS, side, side)

    def trunk_identity(self) -> dict:
        """What decides `features(x)`: backbone, builder, normalisation and the weights file's name, size,
        sha256 and whether it is a stand-in (or the random seed); hashed once per model."""
        if self._identity is None:
            if self.weights_file is None:
                values = {"weights": "random", "seed": RANDOM_TRUNK_SEED}
            else:
                path = self.weights_file
                values = {"weights": "coco", "file": os.path.basename(path), "bytes": os.path.getsize(path),
                          "sha256": sha256_of_file(path), "standin": os.path.exists(path + STANDIN_SUFFIX)}
            self._identity = {"backbone": self.backbone_name, **values, "mean": list(self.mean),
                              "std": list(self.std), "torchvision_builder": BACKBONES[self.backbone_name][0].__name__}
        return dict(self._identity)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _coco_state_dict(backbone):
    """The COCO weights of `backbone`: downloaded once (hash-checked), then read with weights_only=True."""
    coco = BACKBONES[backbone][1]
    path = weights_path(backbone)
    try:
        return coco.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"could not download the pretrained weights {os.path.basename(path)} from {coco.url} ({err}); "
                        f"download that file yourself and put it in {os.path.dirname(path)}, {STANDIN_HINT}") from err
    except pickle.UnpicklingError as err:
        raise UserError(f"the pretrained weights file {path} holds objects other than tensors, which could run code "
                        f"when loaded; refused. Delete it and download it again from {coco.url}") from err
    except (RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"the pretrained weights file {path} is corrupt or incomplete ({reason}); "
                        f"delete it and download it again from {coco.url}") from err


def build_deeplabv3(backbone: str = "resnet101", weights: str = "coco", num_classes: int = 2,
                    channels_last: bool = True) -> FineTunedDeepLabV3:
    """The frozen DeepLabV3 with a new trainable `classifier[4]` (initialised from the global RNG). weights:
    "coco" (downloaded to the torch hub cache) or "none" (random, RANDOM_TRUNK_SEED, with a warning);
    channels_last: the frozen trunk's memory format (else NCHW)."""
    if backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if weights not in WEIGHTS:
        raise UsageError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    builder = BACKBONES[backbone][0]
    state = _coco_state_dict(backbone) if weights == "coco" else None
    with torch.random.fork_rng(devices=[]):  # a random trunk is always the same one
        torch.manual_seed(RANDOM_TRUNK_SEED)
        model = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    if state is None:
        warnings.warn(f"DeepLabV3 {backbone} is randomly initialised (--weights none): no pretrained features",
                      stacklevel=2)
    else:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(f"the pretrained weights file {weights_path(backbone)} does not fit DeepLabV3-{backbone} "
                            f"({str(err).splitlines()[0]}); delete it and download it again") from err
    model.aux_classifier = None
    model.requires_grad_(False)
    model.classifier[4] = nn.Conv2d(model.classifier[4].in_channels, num_classes, kernel_size=1)  # new, trainable
    file = weights_path(backbone) if state is not None else None
    return FineTunedDeepLabV3(model, backbone, weights, file, channels_last).train()
