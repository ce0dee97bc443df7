"""`python segmentation.py --predict IMAGE|FOLDER|GLOB ... [--checkpoint best|last|PATH] [--out DIR]`.

The model and its preprocessing come from the checkpoint, not from flags: the backbone, weights and
image size from its hyper-parameters, the new layer from its state_dict, and the frozen trunk is
rebuilt from its weights (refused in one line when they are not the ones it was trained with).

Each image goes through the training transform (data/oxford17.py `preprocess` and `normalise`:
8-bit RGB, resized bilinearly to image_size x image_size, normalised), because the new last layer
only ever saw features of images at that size. The 0/1 mask is resized back to the image's own size
with NEAREST, so it holds only 0 and 255. Writes <stem>_mask.png, <stem>_overlay.png (flower pixels
tinted magenta) and the flower-pixel share per image, printed and in predictions.json / .csv.
"""
import csv
import io
import sys

import numpy as np
import torch
from PIL import Image

from data.oxford17 import normalise, preprocess
from errors import UsageError
from files import atomic_write_json, atomic_write_text
from inference.checkpoints import find_checkpoint, load_module
from inference.cli import PredictConfig, for_each_image, pick_device, raise_if_failed
from inference.images import load_image
from inference.outputs import output_folder, save_png
from segmentation import TASK, SegmentationModule
from training.config import parse, run_main

OVERLAY_COLOUR = np.array([255, 0, 255], dtype=np.float32)  # magenta: rare in flowers and leaves alike
OVERLAY_ALPHA = 0.5


def load_segmenter(path):
    """The SegmentationModule of a checkpoint or model.pt, in eval mode, its trunk rebuilt and checked."""
    return load_module(SegmentationModule, path, TASK).eval()


@torch.inference_mode()
def segment(module, rgb8):
    """uint8 RGB (H, W, 3) -> uint8 mask (H, W) of 0 (background) and 1 (flower), at the image's size."""
    model, height, width = module.model, *rgb8.shape[:2]
    x = normalise(preprocess(rgb8, module.hparams.image_size), model.mean, model.std)
    pred = module.predict_masks(x.unsqueeze(0).to(module.device))[0].to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(pred).resize((width, height), Image.NEAREST))


def overlay(rgb8, mask):
    """The image with its flower pixels tinted OVERLAY_COLOUR."""
    out = rgb8.astype(np.float32)
    flower = mask.astype(bool)
    out[flower] = out[flower] * (1 - OVERLAY_ALPHA) + OVERLAY_COLOUR * OVERLAY_ALPHA
    return np.rint(out).astype(np.uint8)


def predict(config):
    """Segment every input image; raises UserError (exit 1) at the end if any failed."""
    if not config.predict:
        raise UsageError("give the images to segment: --predict IMAGE|FOLDER|GLOB ...")
    device = pick_device(config.accelerator)
    path, how = find_checkpoint(config.checkpoint, TASK, config.results_dir, config.logs_dir)
    module = load_segmenter(path).to(device)
    hp = module.hparams
    out = output_folder(config.out, config.results_dir, TASK, f"{hp.loss}-{hp.backbone}")
    print(f"DeepLabV3-{hp.backbone} ({hp.loss} loss) from {path} ({how}); images resized to {hp.image_size} px "
          f"for the model; writing to {out}")

    def one(image_path, stem, say):
        image = load_image(image_path)
        rgb8 = image.rgb8()
        mask = segment(module, rgb8)
        mask_path = save_png(mask * np.uint8(255), out / f"{stem}_mask.png")
        overlay_path = save_png(overlay(rgb8, mask), out / f"{stem}_overlay.png")
        share = float(mask.mean())
        if say:
            print(f"{image_path}: flower {share:.1%} of the pixels -> {mask_path}, {overlay_path}")
        return {"input": str(image_path), "mode": image.mode, "width": image.size[0], "height": image.size[1],
                "flower_share": round(share, 6), "mask": str(mask_path), "overlay": str(overlay_path)}

    done, failed, total = for_each_image(config, one)
    if done or config.out is not None:  # a folder of our own with no image in it is removed (raise_if_failed)
        atomic_write_json(out / "predictions.json", {
            "task": TASK, "checkpoint": str(path), "checkpoint_choice": how, "hyperparameters": dict(hp),
            "preprocessing": {"image_size": hp.image_size, "mean": list(module.model.mean),
                              "std": list(module.model.std)},
            "images": done, "failed": [{"input": p, "error": e} for p, e in failed]})
        atomic_write_text(out / "predictions.csv", _csv(done))
    raise_if_failed(failed, total, out, claimed=config.out is None)


def _csv(rows):
    buffer = io.StringIO()
    fields = ["input", "width", "height", "flower_share", "mask", "overlay"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def parse_config(argv=None):
    return parse(PredictConfig, argv, "segmentation.py", "Flower masks for your own images with a trained model "
                 "(no training).", "example: python segmentation.py --predict flower.jpg garden/")


def main(argv=None):
    return run_main(predict, sys.argv[1:] if argv is None else argv, parse_config)
