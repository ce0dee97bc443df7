"""What `--predict` of both programs shares: its flags, the inputs (files, folders, globs), and the loop
that keeps going when one image fails.

Inputs: a file is used as given; a folder is searched recursively for image files (by extension, hidden
files and folders left out); a glob pattern (`photos/*.jpg`, `photos/**/*.png`) is expanded, and what it
matches is used as given. Outputs keep each input's path relative
to the folder (or the glob's fixed part) it was found under, and its name; files given one by one
are written at the output folder's top. An input that matches nothing, and an image that cannot be
read, are each one `error:` line (named, with the reason); the others are still written, and the exit
code is 1 when any failed. With many images a progress bar replaces the per-image lines.
"""
import contextlib
import dataclasses
import glob
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from errors import UsageError, UserError
from training.config import Config, option

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BAR_FROM = 20  # this many images or more: a progress bar instead of a line per image


@dataclasses.dataclass(frozen=True)
class PredictConfig(Config):
    """The flags of `--predict` both programs have."""

    predict: tuple[str, ...] = option((), "image files, folders (searched recursively) or glob patterns",
                                      metavar="IMAGE", group="inputs and outputs", shown="none, give some")
    checkpoint: str = option("best", "best or last: that checkpoint of the newest finished run in RESULTS_DIR / "
                             "LOGS_DIR (or its model.pt), or a .ckpt / model.pt file", metavar="best|last|PATH",
                             group="inputs and outputs")
    out: str | None = option(None, "output folder", metavar="DIR", group="inputs and outputs",
                             shown="a new folder RESULTS_DIR/<task>/predict/<name>-<date>-<time>")
    results_dir: str = option("results", "where finished runs are found", group="files")
    logs_dir: str = option("logs", "where their checkpoints are found", group="files")
    accelerator: str = option("auto", "cpu, gpu, cuda, mps or auto (a GPU when there is one)", group="files")
    debug: bool = option(False, "show the Python traceback of an error instead of one line", group="files")


def pick_device(accelerator):
    """The torch device for --accelerator: auto picks CUDA when there is one, else the CPU."""
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


def expand_inputs(specs):
    """([(image path, output stem relative to the output folder)], [(spec, why)] for specs matching nothing)."""
    found, missing = [], []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                     and not _hidden(p.relative_to(path))]
            found += [(p, p.relative_to(path).with_suffix("")) for p in files]
            if not files:
                missing.append((spec, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder {path}"))
        elif path.exists() or not glob.has_magic(spec):
            found.append((path, Path(path.stem)))  # a missing file is reported when it is read
        else:
            base = Path(*[part for part in Path(spec).parts if not glob.has_magic(part)][:_fixed(spec)])
            matches = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
            found += [(p, p.relative_to(base).with_suffix("")) for p in matches]
            if not matches:
                missing.append((spec, "the pattern matches no file"))
    return found, missing


def _hidden(relative):
    """Whether a path found in a folder is hidden (a part starts with "."), as glob patterns skip them too:
    the ._photo.jpg files macOS writes beside every photo on other disks are not images."""
    return any(part.startswith(".") for part in relative.parts)


def _fixed(pattern):
    """How many leading parts of a glob pattern hold no wildcard."""
    parts = Path(pattern).parts
    return next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))


class UniqueNames:
    """Output stems: the input's own relative stem, with -2, -3, ... when two inputs share it."""

    def __init__(self):
        self.used = set()

    def __call__(self, stem):
        stem, i = Path(stem), 1
        name = stem
        while str(name) in self.used:
            i += 1
            name = stem.with_name(f"{stem.name}-{i}")
        self.used.add(str(name))
        return name


def for_each_image(config, process):
    """Call `process(path, output stem)` for every input image; a UserError is one `error:` line and the
    loop goes on. Returns (results of the images that worked, [(input, message)] of those that failed,
    how many inputs there were: images found plus specs that matched nothing)."""
    inputs, missing = expand_inputs(config.predict)
    for spec, why in missing:
        print(f"error: {spec}: {why}", file=sys.stderr, flush=True)
    failed = list(missing)
    names, done = UniqueNames(), []
    bar = tqdm(inputs, desc="images", unit="image", disable=len(inputs) < BAR_FROM, file=sys.stderr)
    for path, stem in bar:
        try:
            done.append(process(path, names(stem), bar.disable))
        except (UserError, MemoryError, torch.OutOfMemoryError) as e:
            why = str(e) if isinstance(e, UserError) else f"{path}: too large to process here ({type(e).__name__})"
            (print if bar.disable else tqdm.write)(f"error: {why}", file=sys.stderr)
            failed.append((str(path), why))
    bar.close()
    return done, failed, len(inputs) + len(missing)


def raise_if_failed(failed, total, out, claimed=False):
    """After the loop: a UserError (exit code 1) when any image failed, saying where the others went. When
    none worked, the output folder this call `claimed` (not one given with --out) is removed again."""
    if failed and len(failed) == total and claimed:
        with contextlib.suppress(OSError):  # empty: nothing was written
            Path(out).rmdir()
            Path(out).parent.rmdir()  # RESULTS_DIR/<task>/predict, when no earlier call left outputs there
        raise UserError(f"none of the {total} inputs could be processed (see above); nothing was written")
    if failed:
        raise UserError(f"{len(failed)} of {total} inputs could not be processed (see above); "
                        f"the other {total - len(failed)} were written to {out}")
