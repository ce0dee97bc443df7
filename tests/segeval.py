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


HEAD = "model.model.classifier.4"  # the new layer's place in SegmentationModule's state_dict


def checkpoint_module(ckpt_path):
    """A fresh SegmentationModule given the checkpoint's new layer, and nothing else from the file: the
    checkpoint must hold exactly the head's weight and bias, and the random frozen trunk is the one
    every build makes (tests never download weights)."""
    from segmentation import SegmentationModule

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert set(checkpoint["state_dict"]) == {f"{HEAD}.weight", f"{HEAD}.bias"}, sorted(checkpoint["state_dict"])[:5]
    hp = dict(checkpoint["hyper_parameters"])
    assert hp["weights"] == "none"
    module = SegmentationModule(**hp)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    return module.eval()


@torch.no_grad()
def checkpoint_logits(ckpt_path, images, batch_size):
    """Logits of the checkpoint's network from torchvision's own DeepLabV3.forward (not the package's
    features/head split), in the test loader's batches."""
    net = checkpoint_module(ckpt_path).model.model
    return torch.cat([net(images[i:i + batch_size])["out"] for i in range(0, len(images), batch_size)])


def checkpoint_iou(ckpt_path, root, size, batch_size, split_name="test", unlabelled="ignore"):
    images, masks = load_split(root, split_name, size, unlabelled)
    return iou_from_confusion(checkpoint_logits(ckpt_path, images, batch_size).argmax(dim=1).numpy(), masks)


def mean_loss(logits, masks, loss, ignore=255):
    """The exact split loss: cross-entropy averaged over every valid pixel of the split at once, or the
    soft IoU 1 - I/U per image (flower probability X, flower mask Y, over valid pixels) averaged over images."""
    masks = torch.as_tensor(np.asarray(masks)).long()
    valid = masks != ignore
    if loss == "ce":
        logp = logits.double().log_softmax(dim=1)
        picked = logp.gather(1, masks.clamp(max=1)[:, None])[:, 0]
        return float(-picked[valid].sum() / valid.sum())
    x, y = logits.double().softmax(dim=1)[:, 1], (masks == 1).double()
    inter = (x * y * valid).sum(dim=(1, 2))
    union = ((x + y - x * y) * valid).sum(dim=(1, 2))
    return float((1 - inter / union).mean())


def checkpoint_loss(ckpt_path, root, size, batch_size, loss, split_name="val"):
    images, masks = load_split(root, split_name, size)
    return mean_loss(checkpoint_logits(ckpt_path, images, batch_size), masks, loss)


def plant_all_flower_epoch_2(monkeypatch, module_class):
    """Make epoch 2 of a segmentation run end with a layer that calls every pixel flower (worse than epoch 1),
    just before it is validated and its checkpoints saved: then the best checkpoint is epoch 1's, not last."""

    def all_flower_at_epoch_2(module):
        if module.current_epoch == 1 and not module.trainer.sanity_checking:
            with torch.no_grad():
                module.model.last_layer.weight.zero_()
                module.model.last_layer.bias.copy_(torch.tensor([-5.0, 5.0]))

    monkeypatch.setattr(module_class, "on_validation_epoch_start", all_flower_at_epoch_2, raising=False)
