"""`python colorization.py MODEL --predict IMAGE ... [--checkpoint best|last|PATH] [--decode ...] [--out DIR]`.

Each image is turned to greyscale exactly as the training inputs were (inference/images.py), run
through the model at its own size (padded to a multiple of 4 by repeating edge pixels, cropped
back), decoded with the palette the model was trained with, and written as <out>/<name>_colour.png
at the image's size. One figure, predictions.png, shows grey | prediction | original for the call,
and predictions.json records what was used and written.

Palette: checkpoints hold the palette they were trained with (ColorizationModule.on_save_checkpoint),
and --palette is then ignored (with a warning). Older checkpoints without it use --palette when given,
else the palette their run's summary.json names, else the shipped one (with a warning).
"""
import json
import warnings
from pathlib import Path

import torch

from color.decode import DEFAULT_TEMPERATURE, decode
from color.palette import check_palette, load_palette
from inference.cli import for_each_image, pick_device, raise_if_failed
from inference.images import crop_to, load_image, pad_to_multiple
from inference.outputs import FIGURE_MAX_ROWS, UniqueNames, output_folder, save_png, save_side_by_side, thumbnail, to_uint8
from models import build_model
from errors import UserError
from training.checkpoints import load_checkpoint, model_state
from training.runs import find_checkpoint
from training.files import atomic_write_json

TASK = "colorization"


def load_colorizer(path, model_name=None, results_dir="results", palette=None):
    """(model in eval mode, palette (K, 3), where the palette came from, hyper-parameters) of a checkpoint."""
    checkpoint = load_checkpoint(path, TASK, model_name)
    hp = checkpoint["hyper_parameters"]
    try:
        model = build_model(hp["model"], kernel=hp["kernel"], num_in_channels=hp.get("num_in_channels", 1),
                            num_filters=hp["num_filters"], num_colours=hp["num_colours"])
        model.load_state_dict(model_state(checkpoint))
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit a {hp.get('model')} with hyper-parameters {hp} "
                        f"({str(e).splitlines()[0]})") from e
    palette, source = checkpoint_palette(checkpoint, path, results_dir, palette)
    if len(palette) != hp["num_colours"]:
        raise UserError(f"{path}: the model predicts {hp['num_colours']} colours but its palette ({source}) has "
                        f"{len(palette)}")
    return model.eval(), palette, source, hp


def checkpoint_palette(checkpoint, path, results_dir, override=None):
    """(palette, source): stored in the checkpoint, else `override` (--palette), else the one its run's
    summary.json names, else the shipped one."""
    if "palette" in checkpoint:
        if override is not None:
            warnings.warn(f"--palette {override} is ignored: {path} stores the palette it was trained with",
                          stacklevel=2)
        return check_palette(checkpoint["palette"], f"stored in {path}"), "stored in the checkpoint"
    if override is not None:
        return load_palette(override), f"{override} (--palette)"
    summary = Path(results_dir) / TASK / Path(path).resolve().parent.parent.name / "summary.json"
    named = _summary_palette(summary)
    if named in (None, "default"):
        if named is None:
            warnings.warn(f"{path} holds no palette and its run's {summary} was not found; decoding with the "
                          f"shipped palette color/color_kmeans24_cat7.npy", stacklevel=2)
        named_by = f" (named by {summary})" if named else ""
        return load_palette(None), f"the shipped color/color_kmeans24_cat7.npy{named_by}"
    if named == "tensor":
        raise UserError(f"{path} was trained with a palette given as a tensor, which was not saved; "
                        f"retrain, or use a newer checkpoint (they store their palette)")
    return load_palette(named), f"{named} (named by {summary})"


def _summary_palette(summary_path):
    try:
        return json.loads(summary_path.read_text())["data"]["palette"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@torch.inference_mode()
def colorize(model, grey, palette, method="argmax", temperature=DEFAULT_TEMPERATURE):
    """grey (1, H, W) in [0, 1] -> RGB (3, H, W) in [0, 1], for any H, W (padded for the net, cropped back)."""
    device = next(model.parameters()).device
    x, size = pad_to_multiple(grey.unsqueeze(0).to(device))
    logits = crop_to(model(x), size)
    return decode(logits, palette, method, temperature)[0].cpu()


def predict(args):
    """Colourise every --predict image; raises UserError (exit 1) at the end if any failed."""
    device = pick_device(args.accelerator)
    checkpoint_path, how = find_checkpoint(args.checkpoint or "best", TASK, args.results_dir, args.logs_dir, args.model)
    model, palette, palette_source, hp = load_colorizer(checkpoint_path, args.model, args.results_dir, args.palette)
    model.to(device)
    method = args.decode or "argmax"
    temperature = args.temperature or DEFAULT_TEMPERATURE
    decoding = f"annealed mean, T={temperature:g}" if method == "annealed" else "argmax"
    out = output_folder(args.out, args.results_dir, TASK, hp["model"])
    print(f"{hp['model']} from {checkpoint_path} ({how}); decoding: {decoding}; writing to {out}")
    names, rows = UniqueNames(), []

    def one(path):
        image = load_image(path)
        rgb = colorize(model, image.grey(), palette, method, temperature)
        name = names(image.name)
        colour = save_png(to_uint8(rgb), out / f"{name}_colour.png")
        if len(rows) < FIGURE_MAX_ROWS:
            rows.append((name, [thumbnail(to_uint8(image.grey())), thumbnail(to_uint8(rgb)), thumbnail(image.rgb8())]))
        print(f"{path} -> {colour}")
        return {"input": str(path), "mode": image.mode, "size": list(image.size), "colour": str(colour)}

    done, failed = for_each_image(args.predict, one)
    if rows:
        save_side_by_side(rows, ["greyscale input", f"prediction ({decoding})", "original"], out / "predictions.png",
                          f"{hp['model']} ({how}): {len(done)} images", total=len(done))
    atomic_write_json(out / "predictions.json", {
        "task": TASK, "checkpoint": str(checkpoint_path), "checkpoint_choice": how, "model": hp["model"],
        "hyperparameters": hp, "palette": palette_source, "decode": method,
        "temperature": temperature if method == "annealed" else None,
        "images": done, "failed": [{"input": p, "error": e} for p, e in failed],
    })
    raise_if_failed(failed, len(args.predict), out)
