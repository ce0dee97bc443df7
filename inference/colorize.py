"""`python colorization.py [MODEL] --predict IMAGE|FOLDER|GLOB ... [--checkpoint best|last|PATH] [--decode ...]`.

Each image is turned to greyscale exactly as the training inputs were (inference/images.py), run
through the model at its own size (padded to a multiple of 4 by repeating edge pixels, cropped back),
decoded with the palette the model was trained with (a hyper-parameter of every checkpoint), and
written as <out>/<relative path>_colour.png at the image's size. One figure, predictions.png, shows
grey | prediction | original for the first images, and predictions.json records what was used and written.
Without training first, `best` finds the weights that ship in results/ (model.pt of the report's UNet).
"""
import dataclasses
import sys

import torch

from color.palette import DEFAULT_TEMPERATURE, check_palette
from errors import UsageError, UserError
from files import atomic_write_json
from inference.checkpoints import find_checkpoint
from inference.cli import PredictConfig, for_each_image, pick_device, raise_if_failed
from inference.images import crop_to, load_image, pad_to_multiple
from inference.outputs import FIGURE_MAX_ROWS, output_folder, save_png, save_side_by_side, thumbnail, to_uint8
from models.registry import MODELS, build_model
from reporting.decodings import DECODINGS, decode
from training.config import option, parse, positive_float, run_main
from training.runs import load_checkpoint

TASK = "colorization"
DEFAULT_MODEL = "UNet"  # the report's best net, whose weights ship in results/


@dataclasses.dataclass(frozen=True)
class ColorizePredictConfig(PredictConfig):
    model: str | None = option(None, "the model whose newest finished run to use; with --checkpoint PATH, the model "
                               "the file must hold", choices=tuple(MODELS), group="model", positional=True,
                               shown=f"{DEFAULT_MODEL}; with --checkpoint PATH, the file's")
    decode: str = option("argmax", "argmax: the most likely palette colour (the homework's); annealed: the annealed "
                         "mean of Zhang et al. 2016, smoother and more vivid", choices=DECODINGS, group="model")
    temperature: float | None = option(None, "temperature of --decode annealed", check=positive_float, group="model",
                                       shown=f"{DEFAULT_TEMPERATURE}, the paper's")

    def __post_init__(self):
        super().__post_init__()
        if self.temperature is not None and self.decode != "annealed":
            raise UsageError("--temperature only applies to --decode annealed")


def load_colorizer(path, model_name=None):
    """(model in eval mode, palette (K, 3), hyper-parameters) of a colourisation checkpoint or model.pt."""
    checkpoint = load_checkpoint(path, TASK)
    hp = checkpoint["hyper_parameters"]
    if model_name is not None and hp.get("model") != model_name:
        raise UserError(f"--checkpoint {path}: a checkpoint of {hp.get('model')}, not of {model_name}; run "
                        f"`python colorization.py {hp.get('model')} ...` or give a {model_name} checkpoint")
    try:
        palette = check_palette(hp["palette"], f"stored in {path}")
        model = build_model(hp["model"], kernel=hp["kernel"], num_in_channels=1, num_filters=hp["num_filters"],
                            num_colours=len(palette))
        model.load_state_dict({k[len("model."):]: v for k, v in checkpoint["state_dict"].items()
                               if k.startswith("model.")})
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit a {hp.get('model')} with hyper-parameters "
                        f"{ {k: v for k, v in hp.items() if k != 'palette'} } ({str(e).splitlines()[0]})") from e
    return model.eval(), palette, hp


@torch.inference_mode()
def colour_logits(model, grey):
    """grey (1, H, W) in [0, 1] -> logits (1, K, H, W), for any H, W (padded for the net, cropped back)."""
    device = next(model.parameters()).device
    x, size = pad_to_multiple(grey.unsqueeze(0).to(device))
    return crop_to(model(x), size)


@torch.inference_mode()
def colorize(model, grey, palette, method="argmax", temperature=DEFAULT_TEMPERATURE, logits=None):
    """grey (1, H, W) in [0, 1] -> RGB (3, H, W) in [0, 1]; `logits` of `colour_logits` when already computed
    (the demo decodes one pass twice)."""
    logits = colour_logits(model, grey) if logits is None else logits
    return decode(logits, palette, method, temperature)[0].cpu()


def find_colorizer(checkpoint, model=None, results_dir="results", logs_dir="logs"):
    """(model in eval mode, palette, hyper-parameters, path, how it was chosen) for `--checkpoint` best|last|PATH:
    best / last of the newest finished run of `model` (default UNet); a PATH must hold `model` when one is named."""
    path, how = find_checkpoint(checkpoint, TASK, results_dir, logs_dir, {"model": model or DEFAULT_MODEL})
    net, palette, hp = load_colorizer(path, model)
    return net, palette, hp, path, how


def predict(config):
    """Colourise every input image; raises UserError (exit 1) at the end if any failed."""
    if not config.predict:
        raise UsageError("give the images to colourise: --predict IMAGE|FOLDER|GLOB ...")
    device = pick_device(config.accelerator)
    model, palette, hp, path, how = find_colorizer(config.checkpoint, config.model, config.results_dir, config.logs_dir)
    model.to(device)
    temperature = config.temperature or DEFAULT_TEMPERATURE
    decoding = f"annealed mean, T={temperature:g}" if config.decode == "annealed" else "argmax"
    out = output_folder(config.out, config.results_dir, TASK, hp["model"])
    print(f"{hp['model']} from {path} ({how}); decoding: {decoding}; writing to {out}")
    rows = []

    def one(image_path, stem, say):
        image = load_image(image_path)
        rgb = colorize(model, image.grey(), palette, config.decode, temperature)
        colour = save_png(to_uint8(rgb), out / f"{stem}_colour.png")
        if len(rows) < FIGURE_MAX_ROWS:
            rows.append((str(stem), [thumbnail(to_uint8(image.grey())), thumbnail(to_uint8(rgb)),
                                     thumbnail(image.rgb8())]))
        if say:
            print(f"{image_path} -> {colour}")
        return {"input": str(image_path), "mode": image.mode, "size": list(image.size), "colour": str(colour)}

    done, failed, total = for_each_image(config, one)
    if rows:
        save_side_by_side(rows, ["greyscale input", f"prediction ({decoding})", "original"], out / "predictions.png",
                          f"{hp['model']} ({how}): {len(done)} images", total=len(done))
    if done or config.out is not None:  # a folder of our own with no image in it is removed (raise_if_failed)
        atomic_write_json(out / "predictions.json", {
            "task": TASK, "checkpoint": str(path), "checkpoint_choice": how, "model": hp["model"],
            "hyperparameters": {k: v for k, v in hp.items() if k != "palette"}, "palette": hp["palette"],
            "decode": config.decode, "temperature": temperature if config.decode == "annealed" else None,
            "images": done, "failed": [{"input": p, "error": e} for p, e in failed]})
    raise_if_failed(failed, total, out, claimed=config.out is None)


def parse_config(argv=None):
    return parse(ColorizePredictConfig, argv, "colorization.py", "Colourise your own images with a trained model "
                 "(no training): greyscale in, colour out.",
                 "example: python colorization.py --predict photo.jpg holidays/ 'scans/**/*.png' --decode annealed")


def main(argv=None):
    return run_main(predict, sys.argv[1:] if argv is None else argv, parse_config)
