"""The prediction flags both programs add, and the loop that keeps going when one image fails."""
import sys

import torch

from color.decode import DECODINGS, DEFAULT_TEMPERATURE
from training.cli import positive_float
from errors import UsageError, UserError

PREDICT_ONLY = ("checkpoint", "out", "decode", "temperature")


def add_predict_args(parser, task):
    """--predict IMAGE..., --checkpoint, --out (and --decode, --temperature for colorization)."""
    g = parser.add_argument_group(
        "use a trained model on your own images (no training; the model and its preprocessing come from the checkpoint)")
    g.add_argument("--predict", nargs="+", metavar="IMAGE",
                   help="image files of any size and mode (RGB, RGBA, greyscale, 16-bit, palette)")
    g.add_argument("--checkpoint", default=None, metavar="best|last|PATH",
                   help="best or last checkpoint of the newest finished run in --results-dir / --logs-dir"
                        + (" (of MODEL, when given)" if task == "colorization" else "")
                        + ", or a .ckpt file (default: best)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help=f"output folder (default: a new folder under RESULTS_DIR/{task}/predict/)")
    if task == "colorization":
        g.add_argument("--decode", choices=DECODINGS, default=None,
                       help="argmax: the most likely palette colour (the homework's; default); annealed: the "
                            "annealed mean of Zhang et al. 2016, smoother and more vivid")
        g.add_argument("--temperature", type=positive_float, default=None,
                       help=f"temperature of --decode annealed (default {DEFAULT_TEMPERATURE}, the paper's)")
    return parser


def check_predict_args(parser, args):
    """Bad flag combinations exit 2 via argparse: prediction-only flags without --predict (e.g.
    --checkpoint does not resume training), --temperature without --decode annealed."""
    if args.predict:
        if getattr(args, "temperature", None) is not None and getattr(args, "decode", None) != "annealed":
            parser.error("--temperature only applies to --decode annealed")
        return
    given = [f"--{name}" for name in PREDICT_ONLY if getattr(args, name, None) is not None]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        parser.error(f"{', '.join(given)} only {verb} together with --predict IMAGE ...")


def pick_device(accelerator):
    """torch device for --accelerator: auto picks CUDA when there is one, else the CPU."""
    accelerator = (accelerator or "auto").lower()
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if accelerator in ("auto", "gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--accelerator {accelerator}: no CUDA GPU is available; use --accelerator cpu")
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    raise UsageError(f"--accelerator {accelerator} is not supported for prediction; use auto, cpu or gpu")


def for_each_image(paths, process):
    """Call `process(path)` for every path; a UserError is one `error:` line on stderr and the loop goes on.

    Returns (results of the images that worked, [(path, message)] of those that failed).
    """
    done, failed = [], []
    for path in paths:
        try:
            done.append(process(path))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            failed.append((str(path), str(e)))
    return done, failed


def raise_if_failed(failed, total, out):
    """After the loop: a UserError (exit code 1) when any image failed, saying where the others went."""
    if failed:
        raise UserError(f"{len(failed)} of {total} images could not be processed (see above); "
                        f"the other {total - len(failed)} were written to {out}")
