"""Write a STAND-IN for torchvision's COCO DeepLabV3 weights file, to exercise the pretrained path offline.

    python -m models.standin_weights --torch-home DIR --backbone mobilenet_v3_large

torchvision checks a weights file's hash only when it downloads it; a file already in
`$TORCH_HOME/hub/checkpoints/` is loaded as it is. This script builds the model with torchvision's
own builder exactly as the COCO weights were trained (`num_classes=21, aux_loss=True`), with random
values, and saves its state_dict under the exact file name of `COCO_WITH_VOC_LABELS_V1.url`. So
`build_deeplabv3(backbone, weights="coco")` and `segmentation.py --weights coco` run their whole
default path - same keys, shapes and compute - without a network. The values are random, so its
mIoU means nothing; a marker file `<name>.standin` next to it makes runs record that it is one.

It never overwrites an existing file (it may be the real weights) unless --force is given.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from errors import UserError
from models.deeplabv3 import BACKBONES, STANDIN_SUFFIX


def standin_path(backbone: str, torch_home=None) -> Path:
    """Where torchvision looks for the COCO weights of `backbone` (under `torch_home`, default the
    current torch hub folder)."""
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    hub = Path(torch_home).expanduser() / "hub" if torch_home is not None else Path(torch.hub.get_dir())
    return hub / "checkpoints" / os.path.basename(BACKBONES[backbone][1].url)


def write_standin(backbone: str, torch_home=None, seed: int = 0, force: bool = False) -> Path:
    """Save a random state_dict with the real file name, keys and shapes; returns its path."""
    path = standin_path(backbone, torch_home)
    if path.exists() and not force:
        raise UserError(f"{path} exists (it may be the real weights); pass --force to replace it with a stand-in")
    builder = BACKBONES[backbone][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    marker = Path(str(path) + STANDIN_SUFFIX)
    marker_tmp = marker.with_name(marker.name + f".tmp-{os.getpid()}")
    marker_tmp.write_text(f"stand-in: random values (seed {seed}), not the COCO weights\n")
    os.replace(marker_tmp, marker)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.standin_weights", description=__doc__.split("\n\n")[0])
    p.add_argument("--torch-home", default=None, help="TORCH_HOME to write into (default: torch's own)")
    p.add_argument("--backbone", default="resnet101", choices=BACKBONES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing file")
    args = p.parse_args(argv)
    try:
        path = write_standin(args.backbone, args.torch_home, args.seed, args.force)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote a STAND-IN (random values, not COCO weights) to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
