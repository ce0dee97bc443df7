"""`python demo.py`: a local web page to try the trained models on your own photos (gradio).

    pip install -r requirements-demo.txt
    python demo.py                       # then open http://127.0.0.1:7860
    python demo.py --checkpoint last --segmentation-checkpoint none --port 8000

Drop a photo: the page shows it greyscaled exactly as the training inputs were, colourised by the
newest finished UNet run (the weights that ship in results/ on a fresh clone), decoded by argmax
(the homework's) and by the annealed mean (Zhang et al. 2016) side by side, and, when a segmentation
checkpoint and its trunk's weights are present, its flower mask over the photo. The same code as
`--predict` does the work (inference/). Photos larger than --max-side pixels are shrunk first.

The page runs on this machine only (127.0.0.1 unless --host says otherwise), never shares a public
link and sends gradio no usage statistics. An upload that is not a readable image gets an error
message on the page; the server keeps serving.
"""
import dataclasses
import os
import sys
import traceback
from pathlib import Path

from errors import UsageError, UserError
from training.config import Config, option, parse, positive_int, run_main

REQUIREMENTS = "requirements-demo.txt"
SEGMENTATION_CHOICES = "best|last|PATH|none"


def port_number(text):
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"must lie in 1..65535, got {port}")
    return port


@dataclasses.dataclass(frozen=True)
class DemoConfig(Config):
    model: str | None = option(None, "the colourisation model whose newest finished run to use", group="model",
                               choices=("PoolUpsampleNet", "ConvTransposeNet", "UNet"),
                               shown="UNet; with --checkpoint PATH, the file's")
    checkpoint: str = option("best", "colourisation: best or last checkpoint of the newest finished run, or a "
                             ".ckpt / model.pt file", metavar="best|last|PATH", group="model")
    segmentation_checkpoint: str = option("best", "the flower mask: best or last of the newest finished "
                                          "segmentation run, a file, or none (no mask)",
                                          metavar=SEGMENTATION_CHOICES, group="model",
                                          shown="best, when there is a run and its trunk's weights")
    host: str = option("127.0.0.1", "address to serve on (0.0.0.0: every network this machine is on)",
                       group="server")
    port: int = option(7860, "port to serve on", check=port_number, group="server")
    max_side: int = option(1024, "photos whose longer side exceeds this many pixels are shrunk to it first",
                           check=positive_int, group="server")
    results_dir: str = option("results", "where finished runs are found", group="files")
    logs_dir: str = option("logs", "where their checkpoints are found", group="files")
    debug: bool = option(False, "show the Python traceback of an error instead of one line", group="files")


def import_gradio():
    """gradio, imported with its usage statistics off (a local page phones nobody), or one UserError."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError as e:
        raise UserError(f"the demo needs gradio, which is not installed ({e}); install it with "
                        f"`pip install -r {REQUIREMENTS}`") from None
    return gradio


# ----------------------------------------------------------------------------- the models

@dataclasses.dataclass
class Models:
    colour: object  # the colourisation net, eval mode
    palette: object
    colour_name: str  # e.g. "UNet from results/colorization/UNet-homework/model.pt (best of run UNet-homework)"
    segmenter: object | None  # SegmentationModule or None
    mask_note: str  # what the mask panel shows, or why there is none


def load_models(config):
    from inference.colorize import find_colorizer

    net, palette, hp, path, how = find_colorizer(config.checkpoint, config.model, config.results_dir,
                                                 config.logs_dir)
    segmenter, note = load_segmentation(config)
    return Models(net, palette, f"{hp['model']} from {path} ({how})", segmenter, note)


def load_segmentation(config):
    """(SegmentationModule or None, a note saying which, or why not). The default `best` is optional: no
    run, or a run whose trunk weights are not on this machine, means no mask panel. A file given, or
    `last`, must load."""
    from inference.checkpoints import find_checkpoint
    from models.deeplabv3 import weights_path
    from training.runs import load_checkpoint

    spec = config.segmentation_checkpoint
    if spec == "none":
        return None, "no flower mask (--segmentation-checkpoint none)"
    optional = spec == "best"
    try:
        path, how = find_checkpoint(spec, "segmentation", config.results_dir, config.logs_dir)
    except UserError as e:
        if optional:
            return None, f"no flower mask: {e}".replace("--checkpoint PATH", "--segmentation-checkpoint PATH")
        raise
    hp = load_checkpoint(path, "segmentation", flag="--segmentation-checkpoint")["hyper_parameters"]
    trunk = weights_path(hp.get("backbone", "resnet101"))
    if hp.get("weights") == "coco" and not os.path.isfile(trunk):
        message = (f"the segmentation checkpoint {path} needs its trunk's COCO weights {trunk}, which are not on "
                   f"this machine (a training run downloads them)")
        if optional:
            return None, f"no flower mask: {message}"
        raise UserError(f"--segmentation-checkpoint {spec}: {message}; or pass --segmentation-checkpoint none")
    from inference.segment import load_segmenter

    module = load_segmenter(path)
    return module, f"flower mask: DeepLabV3-{module.hparams.backbone} ({module.hparams.loss} loss) from {path} ({how})"


# ----------------------------------------------------------------------------- one photo

def shrink(image, max_side):
    """A LoadedImage whose longer side is at most `max_side` (antialiased bilinear), and whether it shrank."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from inference.images import LoadedImage

    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return image, False
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    values = torch.from_numpy(image.values.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    values = F.interpolate(values, size=size, mode="bilinear", antialias=True, align_corners=False)
    values = values[0].permute(1, 2, 0).round().clamp(0, image.max_value).numpy().astype(image.values.dtype)
    return LoadedImage(image.path, image.mode, values, image.max_value), True


def process(models, path, name, max_side):
    """The page's work for one uploaded file: (photo, greyscale, argmax, annealed, mask overlay or None, note),
    uint8 arrays at the (shrunk) photo's size. A file that is not a readable image is a UserError."""
    from inference.colorize import colorize, colour_logits
    from inference.images import load_image
    from inference.outputs import to_uint8
    from inference.segment import overlay, segment

    image, shrunk = shrink(load_image(path), max_side)
    grey = image.grey()
    logits = colour_logits(models.colour, grey)
    argmax = to_uint8(colorize(models.colour, grey, models.palette, "argmax", logits=logits))
    annealed = to_uint8(colorize(models.colour, grey, models.palette, "annealed", logits=logits))
    photo = image.rgb8()
    mask = None
    width, height = image.size
    note = f"{name}: {width} x {height} pixels" + (f" (shrunk to at most {max_side})" if shrunk else "")
    if models.segmenter is not None:
        flower = segment(models.segmenter, photo)
        mask = overlay(photo, flower)
        note += f"; flower: {flower.mean():.1%} of the pixels"
    return photo, to_uint8(grey), argmax, annealed, mask, note


# ----------------------------------------------------------------------------- the page

def build_page(gr, models, config):
    """The gradio Blocks of the page; its API endpoint /colourise takes one image file."""

    def error(message):
        """A message on the page (and one line in the console, without gradio's traceback)."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        return gr.Error(message, print_exception=False)

    def run(upload):
        """`upload`: the uploaded file's record, unprocessed (preprocess=False): gradio has checked that the file
        is one uploaded to it, and our loader, not gradio's, reads it, so a bad file gets --predict's words."""
        if not upload or not upload.get("path"):
            raise error("drop a photo first")
        path = upload["path"]
        name = upload.get("orig_name") or Path(path).name
        try:
            photo, grey, argmax, annealed, mask, note = process(models, path, name, config.max_side)
        except UserError as e:
            raise error(str(e).replace(str(path), name)) from None
        except Exception as e:  # a bug: say so on the page, keep the traceback for the console
            traceback.print_exc()
            raise error(f"{name} could not be processed ({type(e).__name__}: {e})") from None
        outputs = [grey, argmax, annealed] + ([mask] if models.segmenter is not None else [])
        return [*outputs, note]

    with gr.Blocks(title="image2image demo", analytics_enabled=False) as page:
        gr.Markdown("## Colourise a photo\nDrop a photo: it is turned to greyscale as the training inputs were, "
                    "then colourised by the model below, which was trained on 32 x 32 CIFAR-10 horses. "
                    f"Colours: {models.colour_name}. {models.mask_note[0].upper() + models.mask_note[1:]}.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="your photo", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 height=320)
                button = gr.Button("Colourise", variant="primary")
            grey = gr.Image(label="greyscale input", type="numpy", format="png", interactive=False, height=320)
        with gr.Row():
            argmax = gr.Image(label="argmax (the homework's decoding)", type="numpy", format="png",
                              interactive=False, height=320)
            annealed = gr.Image(label="annealed mean (Zhang et al. 2016)", type="numpy", format="png",
                                interactive=False, height=320)
        outputs = [grey, argmax, annealed]
        if models.segmenter is not None:
            outputs.append(gr.Image(label="flower mask (magenta)", type="numpy", format="png", interactive=False,
                                    height=320))
        note = gr.Markdown()
        button.click(run, inputs=photo, outputs=[*outputs, note], api_name="colourise", preprocess=False)
        photo.upload(run, inputs=photo, outputs=[*outputs, note], api_visibility="private", preprocess=False)
    return page


def serve(config):
    gr = import_gradio()
    models = load_models(config)
    print(f"colours: {models.colour_name}\n{models.mask_note}")
    page = build_page(gr, models, config)
    try:
        # share=False: no public link (no tunnel to gradio.app); local fonts: the page asks no font server
        page.launch(server_name=config.host, server_port=config.port, share=False, inbrowser=False,
                    show_error=True, ssr_mode=False, mcp_server=False, pwa=False, footer_links=[],
                    theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]))
    except OSError as e:
        raise UserError(f"cannot serve on {config.host}:{config.port} ({e}); choose another with --port") from e


def parse_config(argv=None):
    config = parse(DemoConfig, argv, "demo.py", "A local web page to colourise (and segment) your own photos "
                   "with the trained models.", "example: python demo.py --port 8000")
    spec = config.segmentation_checkpoint
    if spec not in ("best", "last", "none") and not Path(spec).expanduser().is_file():
        raise UsageError(f"--segmentation-checkpoint {spec}: no such file; give {SEGMENTATION_CHOICES}")
    return config


def main(argv=None):
    return run_main(serve, sys.argv[1:] if argv is None else argv, parse_config)


if __name__ == "__main__":
    sys.exit(main())
