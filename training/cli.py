"""Command-line plumbing shared by colorization.py and segmentation.py.

- `add_run_args`: the flags every training run has (epochs, batch size, folders, seed, ...);
- `add_perf_args`: `--channels-last`;
- `add_trainer_args` / `trainer_flags`: Lightning Trainer flags passed straight through, so multi-GPU
  and multi-node runs use Lightning's own DDP (`--strategy ddp --devices N --num-nodes M`);
- `run_main`: turns a `UserError` into one line on stderr and an exit code, without a traceback
  (unless `--debug`).
"""
import argparse
import sys
import warnings

from errors import UserError


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def devices_value(text):
    """Lightning's --devices: 'auto', a count ('2', '-1' for all) or a list of ids ('0,1')."""
    text = text.strip()
    if text == "auto" or "," in text:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', a count or ids like '0,1', got {text!r}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks."""


def add_run_args(parser, epochs, batch_size, lr, data_dir):
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", "--nepochs", type=positive_int, default=epochs, help="number of training epochs")
    g.add_argument("--batch-size", "--batch_size", type=positive_int, default=batch_size, help="images per batch (per device)")
    g.add_argument("--lr", "--learn-rate", "--learn_rate", type=positive_float, default=lr, help="learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed for every random number generator (Lightning seed_everything)")
    g.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes (0 is fastest when the data is already tensors in memory)")
    g.add_argument("--deterministic", action="store_true",
                   help="use deterministic algorithms only (Trainer(deterministic=True)); slower on GPU")
    g.add_argument("--resume", default=None, metavar="last|PATH",
                   help="continue a run from a checkpoint, in that run's folders: 'last' = the run with these "
                        "settings that wrote a checkpoint most recently, or the path of a .ckpt file")
    f = parser.add_argument_group("files")
    f.add_argument("--data-dir", default=data_dir, help="folder holding the data set or its archives (downloaded here when missing)")
    f.add_argument("--results-dir", default="results", help="summaries and figures go to RESULTS_DIR/<task>/<run>/")
    f.add_argument("--logs-dir", default="logs", help="TensorBoard logs and checkpoints go to LOGS_DIR/<task>/<run>/")
    f.add_argument("--run-name", default=None, help="name of the run folder (default: <model>-<date>-<time>); never reuses an existing folder")
    f.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one line")
    return parser


def add_trainer_args(parser):
    g = parser.add_argument_group("Lightning Trainer (passed through)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps, tpu or auto")
    g.add_argument("--devices", type=devices_value, default="auto", help="device count, ids like '0,1', -1 for all, or auto")
    g.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ... (multi-GPU / multi-node)")
    g.add_argument("--num-nodes", type=positive_int, default=1, help="number of machines (with torchrun or SLURM srun)")
    g.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, ...")
    return parser


def add_perf_args(parser):
    g = parser.add_argument_group("speed")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last (NHWC) memory format for the model; default: on for CUDA, off otherwise")
    return parser


def several_processes(args):
    """True when the Trainer flags (or torchrun / srun) ask for more than one process."""
    import os

    devices = args.devices
    many = (devices == -1 or (isinstance(devices, int) and devices > 1)
            or (isinstance(devices, str) and "," in devices.strip(",")))
    return many or args.num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


def trainer_flags(args):
    """The Trainer keyword arguments given on the command line."""
    return dict(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        deterministic=args.deterministic or None,
    )


def quiet_known_warnings():
    """Silence Lightning advice that does not apply: our data sets are tensors already in memory."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    # --resume continues in the run's own checkpoint folder on purpose (training/runs.py).
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # DeepLabV3's frozen trunk stays in eval mode on purpose (models/deeplabv3.py).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def run_main(main, args):
    """Call `main(args)`; return 0, or the UserError's exit code after printing it as one line."""
    try:
        main(args)
        return 0
    except UserError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
