"""`python colorization.py [MODEL] --export onnx` and `python segmentation.py --export onnx`: a trained
network as an ONNX file, for onnxruntime or any other ONNX runtime.

- Colourisation: input `grey` float32 (N, 1, H, W), the mean of R, G, B in [0, 1] (inference/images.py),
  H and W multiples of 4 (pad by repeating edge pixels, as --predict does); output `logits` (N, K, H, W)
  over the K palette colours. Batch, height and width are dynamic.
- Segmentation: the whole network, frozen trunk plus trained last layer. Input `image` float32
  (N, 3, S, S): 8-bit RGB resized bilinearly to S = the run's image size, / 255, normalised with the
  trunk's mean and std (data/oxford17.py `preprocess` + `normalise`); output `logits` (N, 2, S, S),
  background and flower. The batch is dynamic; S is the size the last layer was trained at.

What a user needs to use the file travels inside it (ONNX metadata_props): the palette (K RGB colours
in [0, 1]) and hyper-parameters, or the image size, mean, std and trunk identity.

The file is made with torch's TorchScript exporter (`dynamo=False`): in torch 2.14 it exports all four
networks with logits within 1e-7 of PyTorch's (8-filter colour nets, MobileNet DeepLabV3 at 64 px, random
weights), needs the onnx package only, and took 0.5 s per colour net and 12 s for the MobileNet on 2 shared
CPU cores; the torch.export-based one (`dynamo=True`, the default since torch 2.9) gave the same logits
but needs onnxscript too and took 7 s and 31 s. torch is pinned below 2.15, where the TorchScript exporter
still exists (it warns that it will be removed). Before the file is
written, onnx's checker and onnxruntime run it on an input of another batch size (and size, for the colour
nets) than the one it was traced with, so a written file is one whose dynamic axes work; it is written to a
temporary file and renamed, so a failed export leaves no partial file and an earlier export intact.
"""
import copy
import dataclasses
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from errors import UsageError, UserError
from files import atomic_write_bytes, is_writable
from models.registry import MODELS
from training.config import Config, option, parse, run_main
from training.runs import WEIGHTS, run_of_checkpoint

FORMATS = ("onnx",)
OPSET = 17  # onnxruntime 1.14 (2023) and later run it
TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| of the logits, float32, per unit of the largest logit (if > 1)


@dataclasses.dataclass(frozen=True)
class ExportConfig(Config):
    """The flags of `--export` both programs have."""

    export: str = option("onnx", "the file format", choices=FORMATS, group="inputs and outputs")
    checkpoint: str = option("best", "best or last: that checkpoint of the newest finished run in RESULTS_DIR / "
                             "LOGS_DIR (or its model.pt), or a .ckpt / model.pt file", metavar="best|last|PATH",
                             group="inputs and outputs")
    out: str | None = option(None, "the ONNX file to write (replaced if it exists)", metavar="FILE",
                             group="inputs and outputs",
                             shown="RESULTS_DIR/<task>/<run>/model.onnx (best), <checkpoint name>.onnx otherwise")
    results_dir: str = option("results", "where finished runs are found", group="files")
    logs_dir: str = option("logs", "where their checkpoints are found", group="files")
    debug: bool = option(False, "show the Python traceback of an error instead of one line", group="files")


@dataclasses.dataclass(frozen=True)
class ColorizeExportConfig(ExportConfig):
    model: str | None = option(None, "the model whose newest finished run to export; with --checkpoint PATH, the "
                               "model the file must hold", choices=tuple(MODELS), group="model", positional=True,
                               shown="UNet; with --checkpoint PATH, the file's")


# ----------------------------------------------------------------------------- the ONNX file

def onnx_bytes(net, example, input_name, dynamic_axes, metadata):
    """The ONNX model of `net` traced on `example`, with `metadata` (str -> JSON-able) in metadata_props,
    checked by onnx's checker; as bytes."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter's deprecation notice, and TracerWarnings from the nets' input-shape checks (they only
        # guard a ValueError; the verification below runs the file on other shapes).
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[input_name],
                          output_names=["logits"], dynamic_axes={input_name: dynamic_axes, "logits": dynamic_axes})
    model = onnx.load_model_from_string(buffer.getvalue())
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def both_logits(data, net, x):
    """(onnxruntime's logits of the ONNX model `data`, PyTorch's logits of `net`) for input x, as numpy."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = net(x).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"onnxruntime gave logits of shape {got.shape}, PyTorch {want.shape}")
    return got, want


def verified(data, net, x, what):
    """`data`, once onnxruntime reproduces PyTorch's logits on `x` (a shape other than the traced one).

    Within TOLERANCE (per unit of the largest logit), or else as close to the float64 logits as PyTorch's own
    float32 ones are (at most twice as far): a deep net's float32 rounding alone can exceed 1e-4. Measured on
    DeepLabV3-ResNet-101 (random weights, BatchNorm calibrated, 224 px, logits up to 0.96): onnxruntime vs
    PyTorch 1.0e-3, PyTorch float32 vs float64 7.0e-4, onnxruntime vs float64 6.3e-4."""
    got, want = both_logits(data, net, x)
    diff, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    detail = ""
    if not diff <= TOLERANCE * max(1.0, scale):
        with torch.inference_mode():
            exact = copy.deepcopy(net).double()(x.double()).numpy()
        torch_error, onnx_error = float(np.abs(want - exact).max()), float(np.abs(got - exact).max())
        if not onnx_error <= 2 * torch_error:
            raise UserError(f"the exported {what} does not reproduce PyTorch's logits on an input of shape "
                            f"{tuple(x.shape)} (max difference {diff:.3g}; from the float64 logits: onnxruntime "
                            f"{onnx_error:.3g}, PyTorch float32 {torch_error:.3g}); nothing written. Please report "
                            f"this with the versions of torch, onnx and onnxruntime")
        detail = (f"; float32 rounding: PyTorch's float32 logits are {torch_error:.2g} from float64, "
                  f"onnxruntime's {onnx_error:.2g}")
    print(f"checked with onnxruntime on an input of shape {tuple(x.shape)}: max |difference| of the logits "
          f"{diff:.2g} (largest logit {scale:.3g}){detail}")
    return data


def colour_net_onnx(net, metadata=None, verify=True):
    """ONNX bytes of a colourisation net (eval mode, CPU): dynamic batch, height and width."""
    net = net.eval().cpu()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 1, 32, 32, generator=generator)
    data = onnx_bytes(net, example, "grey", {0: "batch", 2: "height", 3: "width"}, metadata or {})
    if verify:
        data = verified(data, net, torch.rand(3, 1, 36, 44, generator=generator), type(net).__name__)
    return data


def segmentation_onnx(net, image_size, metadata=None, verify=True):
    """ONNX bytes of a FineTunedDeepLabV3 (frozen trunk + trained head), for normalised images of
    `image_size` x `image_size`: dynamic batch."""
    net = net.eval().cpu()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=generator)
    data = onnx_bytes(net, example, "image", {0: "batch"}, metadata or {})
    if verify:
        data = verified(data, net, torch.randn(3, 3, image_size, image_size, generator=generator),
                        f"DeepLabV3-{net.backbone_name}")
    return data


def metadata_of(session_or_model):
    """{key: value} of an ONNX file's metadata_props (an onnxruntime session or an onnx ModelProto)."""
    if hasattr(session_or_model, "get_modelmeta"):
        return dict(session_or_model.get_modelmeta().custom_metadata_map)
    return {p.key: p.value for p in session_or_model.metadata_props}


# ----------------------------------------------------------------------------- where it goes

def default_out(path, spec, task, results_dir):
    """Where an export of checkpoint `path` goes: its run's results folder (model.onnx for `best`, else
    <checkpoint name>.onnx), or beside the checkpoint when it lies outside a run."""
    path = Path(path)
    name = "model.onnx" if spec == "best" or path.name == WEIGHTS else f"{path.stem}.onnx"
    if path.name == WEIGHTS:
        return path.parent / name
    run = run_of_checkpoint(path, task, results_dir)
    if run is not None and run.results.is_dir():
        return run.results / name
    return path.with_suffix(".onnx")


def check_out(out):
    """Refuse, before the (slow) export, an output path that cannot be written."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the file to write, e.g. --out {out / 'model.onnx'}")
    if not is_writable(out.parent):
        raise UserError(f"cannot write {out}: the folder {out.parent} (or its nearest existing parent) is not "
                        f"writable; choose another place with --out FILE")
    return out


def write(out, data):
    try:
        atomic_write_bytes(out, data)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); choose another place with --out FILE") from e
    print(f"wrote {out} ({len(data) / 1e6:.2f} MB)")
    return out


def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"--export onnx needs the packages onnx and onnxruntime ({e}); install them with "
                        f"`pip install -r requirements.txt`") from None


# ----------------------------------------------------------------------------- the two programs

def export_colorization(config):
    from inference.colorize import TASK, find_colorizer

    _need_onnx()
    net, palette, hp, path, how = find_colorizer(config.checkpoint, config.model, config.results_dir,
                                                 config.logs_dir)
    out = check_out(config.out or default_out(path, config.checkpoint, TASK, config.results_dir))
    print(f"exporting {hp['model']} from {path} ({how}) to ONNX (opset {OPSET})")
    metadata = {
        "task": TASK, "model": hp["model"], "checkpoint": str(path),
        "hyperparameters": {k: v for k, v in hp.items() if k != "palette"},
        "palette": [[float(c) for c in colour] for colour in palette.tolist()],
        "input": "grey: float32 (N, 1, H, W), (R + G + B) / 765 for 8-bit RGB, in [0, 1]; H and W multiples "
                 "of 4 (pad by repeating edge pixels)",
        "output": "logits: float32 (N, K, H, W) over the K palette colours; the colour of a pixel is "
                  "palette[argmax over K] (RGB in [0, 1])",
    }
    return write(out, colour_net_onnx(net, metadata))


def export_segmentation(config):
    from inference.checkpoints import find_checkpoint
    from inference.segment import load_segmenter
    from segmentation import TASK

    _need_onnx()
    path, how = find_checkpoint(config.checkpoint, TASK, config.results_dir, config.logs_dir)
    out = check_out(config.out or default_out(path, config.checkpoint, TASK, config.results_dir))
    module = load_segmenter(path)
    net, hp = module.model, module.hparams
    print(f"exporting DeepLabV3-{hp.backbone} ({hp.loss} loss) from {path} ({how}) to ONNX (opset {OPSET}), "
          f"for {hp.image_size} x {hp.image_size} images")
    metadata = {
        "task": TASK, "checkpoint": str(path), "hyperparameters": dict(hp), "image_size": hp.image_size,
        "mean": list(net.mean), "std": list(net.std), "classes": ["background", "flower"],
        "trunk": net.trunk_identity(),
        "input": f"image: float32 (N, 3, {hp.image_size}, {hp.image_size}): 8-bit RGB resized bilinearly to "
                 f"{hp.image_size} x {hp.image_size}, divided by 255, minus mean, divided by std (per channel)",
        "output": f"logits: float32 (N, 2, {hp.image_size}, {hp.image_size}): background, flower",
    }
    return write(out, segmentation_onnx(net, hp.image_size, metadata))


def colorization_main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_main(export_colorization, argv, lambda a: parse(
        ColorizeExportConfig, a, "colorization.py", "Export a trained colourisation net (no training).",
        "example: python colorization.py UNet --export onnx --out unet.onnx"))


def segmentation_main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_main(export_segmentation, argv, lambda a: parse(
        ExportConfig, a, "segmentation.py", "Export a trained segmentation network: frozen trunk and trained "
        "last layer (no training).", "example: python segmentation.py --export onnx --checkpoint last"))
