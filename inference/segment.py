"""`python segmentation.py --predict IMAGE ... [--checkpoint best|last|PATH] [--out DIR]`.

The model and its preprocessing come from the checkpoint, not from flags: the backbone from its
hyper-parameters, every weight (the frozen trunk too, so nothing is downloaded) from its state_dict,
and the image size and normalisation from what SegmentationModule.on_save_checkpoint stored (older
checkpoints: the hyper-parameters' image_size and the normalisation of their weights).

Resolution: each image is processed exactly as in training - converted to 8-bit RGB, resized
bilinearly to image_size x image_size (Pillow, as data/oxford17.py does), normalised - because the
new last layer only ever saw features of images at that size; running at the native size would
change the scale of the flowers in the features. The 0/1 mask is then resized back to the image's
own size with NEAREST, so it holds only 0 and 255, never an interpolated edge value.

Writes <name>_mask.png (0 background / 255 flower, the image's size), <name>_overlay.png (flower
pixels tinted magenta over the image), and the flower-pixel share per image, printed and in
predictions.json and predictions.csv.
"""
import csv
import io
import warnings

import numpy as np
import torch
from PIL import Image

from inference.cli import for_each_image, pick_device, raise_if_failed
from inference.images import load_image
from inference.outputs import UniqueNames, output_folder, save_png
from models.deeplabv3 import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_deeplabv3
from errors import UserError
from training.checkpoints import load_checkpoint, model_state
from training.runs import find_checkpoint
from training.files import atomic_write_json, atomic_write_text

TASK = "segmentation"
OVERLAY_COLOUR = np.array([255, 0, 255], dtype=np.float32)  # magenta: rare in flowers and leaves alike
OVERLAY_ALPHA = 0.5


def preprocessing(checkpoint):
    """{"image_size", "mean", "std"} the model was trained with."""
    if "preprocessing" in checkpoint:
        return dict(checkpoint["preprocessing"])
    hp = checkpoint["hyper_parameters"]
    if hp.get("weights") == "coco" and hp.get("backbone") in BACKBONES:
        transform = BACKBONES[hp["backbone"]][1].transforms()  # no download: only the constants
        mean, std = transform.mean, transform.std
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return {"image_size": hp.get("image_size", 224), "mean": list(mean), "std": list(std)}


def load_segmenter(path):
    """(model in eval mode, preprocessing dict, hyper-parameters) of a segmentation checkpoint."""
    checkpoint = load_checkpoint(path, TASK)
    hp = checkpoint["hyper_parameters"]
    try:
        with warnings.catch_warnings():  # the "randomly initialised" warning: the weights are loaded next
            warnings.simplefilter("ignore")
            model = build_deeplabv3(hp["backbone"], weights=None, num_classes=2)
        model.load_state_dict(model_state(checkpoint))
    except (KeyError, RuntimeError, UserError) as e:
        raise UserError(f"{path}: its weights do not fit DeepLabV3-{hp.get('backbone')} with two classes "
                        f"({str(e).splitlines()[0]})") from e
    return model.eval(), preprocessing(checkpoint), hp


@torch.inference_mode()
def segment(model, rgb8, prep):
    """uint8 RGB (H, W, 3) -> uint8 mask (H, W) of 0 (background) and 1 (flower), at the image's size."""
    size = int(prep["image_size"])
    height, width = rgb8.shape[:2]
    resized = np.array(Image.fromarray(rgb8).resize((size, size), Image.BILINEAR))  # a writable copy
    mean = torch.tensor(prep["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(prep["std"], dtype=torch.float32).view(3, 1, 1)
    x = (torch.from_numpy(resized).permute(2, 0, 1).float() / 255 - mean) / std
    device = next(model.parameters()).device
    pred = model(x.unsqueeze(0).to(device)).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(pred).resize((width, height), Image.NEAREST))


def overlay(rgb8, mask):
    """The image with its flower pixels tinted OVERLAY_COLOUR."""
    out = rgb8.astype(np.float32)
    flower = mask.astype(bool)
    out[flower] = out[flower] * (1 - OVERLAY_ALPHA) + OVERLAY_COLOUR * OVERLAY_ALPHA
    return np.rint(out).astype(np.uint8)


def predict(args):
    """Segment every --predict image; raises UserError (exit 1) at the end if any failed."""
    device = pick_device(args.accelerator)
    checkpoint_path, how = find_checkpoint(args.checkpoint or "best", TASK, args.results_dir, args.logs_dir)
    model, prep, hp = load_segmenter(checkpoint_path)
    model.to(device)
    out = output_folder(args.out, args.results_dir, TASK, f"{hp.get('loss')}-{hp['backbone']}")
    print(f"DeepLabV3-{hp['backbone']} ({hp.get('loss')} loss) from {checkpoint_path} ({how}); "
          f"images resized to {prep['image_size']} px for the model; writing to {out}")
    names = UniqueNames()

    def one(path):
        image = load_image(path)
        rgb8 = image.rgb8()
        mask = segment(model, rgb8, prep)
        name = names(image.name)
        mask_path = save_png(mask * np.uint8(255), out / f"{name}_mask.png")
        overlay_path = save_png(overlay(rgb8, mask), out / f"{name}_overlay.png")
        share = float(mask.mean())
        print(f"{path}: flower {share:.1%} of the pixels -> {mask_path}, {overlay_path}")
        return {"input": str(path), "mode": image.mode, "width": image.size[0], "height": image.size[1],
                "flower_share": round(share, 6), "mask": str(mask_path), "overlay": str(overlay_path)}

    done, failed = for_each_image(args.predict, one)
    atomic_write_json(out / "predictions.json", {
        "task": TASK, "checkpoint": str(checkpoint_path), "checkpoint_choice": how,
        "hyperparameters": hp, "preprocessing": prep,
        "images": done, "failed": [{"input": p, "error": e} for p, e in failed],
    })
    atomic_write_text(out / "predictions.csv", _csv(done))
    raise_if_failed(failed, len(args.predict), out)


def _csv(rows):
    buffer = io.StringIO()
    fields = ["input", "width", "height", "flower_share", "mask", "overlay"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
