"""Segmentation numbers recomputed independently of the package's data and metric code.

Images and masks are read straight from a fixture's files (jpg, palette trimap PNG, datasplits.mat)
with Pillow, the way the homework specifies (image bilinear, mask nearest neighbour, ImageNet
normalisation); predictions come from a checkpoint's weights loaded into a fresh module; IoUs come
from a confusion counted here with numpy. Tests compare these with what a run wrote.
"""
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SPLIT_KEYS = {"train": "trn", "val": "val", "test": "tst"}


def split_numbers(root, split_name, k=1):
    """Sorted 1-based image numbers of `split_name` (train/val/test) of official split k."""
    mat = scipy.io.loadmat(str(Path(root) / "datasplits.mat"))
    return sorted(int(n) for n in np.asarray(mat[f"{SPLIT_KEYS[split_name]}{k}"]).ravel())


def load_mask(root, number, size, unlabelled="ignore"):
    """(size, size) int64 mask from the trimap's palette indices: 1 = flower (VOC (128,0,0)),
    0 = the unlabelled band (VOC black) -> 255 or background, anything else -> background."""
    with Image.open(Path(root) / "trimaps" / f"image_{number:04d}.png") as im:
        assert im.mode == "P"
        index = np.asarray(im.resize((size, size), Image.NEAREST))
    mask = (index == 1).astype(np.int64)
    if unlabelled == "ignore":
        mask[index == 0] = 255
    return mask


def load_image(root, number, size):
    """(3, size, size) float32 image, bilinear-resized and ImageNet-normalised."""
    with Image.open(Path(root) / "jpg" / f"image_{number:04d}.jpg") as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
    return ((rgb - MEAN) / STD).transpose(2, 0, 1)


def load_split(root, split_name, size, unlabelled="ignore"):
    numbers = split_numbers(root, split_name)
    images = torch.from_numpy(np.stack([load_image(root, n, size) for n in numbers]))
    masks = np.stack([load_mask(root, n, size, unlabelled) for n in numbers])
    return images, masks


def iou_from_confusion(preds, masks, ignore=255):
    """{0: background IoU, 1: flower IoU, "miou": their mean} over all pixels together."""
    preds, masks = np.asarray(preds), np.asarray(masks)
    valid = masks != ignore
    out = {}
    for c in (0, 1):
        inter = np.sum((preds == c) & (masks == c) & valid)
        union = np.sum(((preds == c) | (masks == c)) & valid)
        out[c] = inter / union
    out["miou"] = (out[0] + out[1]) / 2
    return out


def checkpoint_predictions(ckpt_path, images, batch_size):
    """0/1 predictions of the checkpoint's network (a fresh module, weights from the file)."""
    from segmentation import SegmentationModule

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hp = dict(checkpoint["hyper_parameters"])
    assert hp["weights"] is None  # tests train from a random frozen trunk: no download
    module = SegmentationModule(**hp)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    with torch.no_grad():  # in the test loader's batches, so every convolution sees the same batch
        logits = torch.cat([module.model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return logits.argmax(dim=1).numpy()


def checkpoint_iou(ckpt_path, root, size, batch_size, split_name="test", unlabelled="ignore"):
    images, masks = load_split(root, split_name, size, unlabelled)
    return iou_from_confusion(checkpoint_predictions(ckpt_path, images, batch_size), masks)
