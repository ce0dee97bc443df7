"""Each task's settings as one frozen dataclass of `option(default, help)` fields: the single source of every default.

From the class come the command line (`parse`: flags, help and checks; `--config FILE` starts from a run's
config.json, flags win; `--print-config`, as LightningCLI users expect), what a run records (`settings`: the
fields that decide its numbers) and configs built directly (`Config(model="UNet")`, checked the same way).
Bad values, on the command line or in a file, are one line, exit code 2.
"""
import argparse
import dataclasses
import importlib
import json
import sys
import types
import typing
from pathlib import Path

from errors import UsageError, UserError

TRAINER_GROUP = "Lightning Trainer (passed through)"
GROUP_ORDER = ("model", "inputs and outputs", "training", "data", "files", "speed", TRAINER_GROUP)


def option(default, help, *, flags=(), check=None, choices=None, group="training", setting=True, metavar=None,
           positional=False, shown=None):
    """A config field. flags: extra spellings (`--nepochs`); check: text -> value, raising ValueError with
    the reason; setting: whether the value changes a run's numbers (then runs that differ in it are
    different runs, see training/runs.py); positional: also accepted as a bare argument; shown: how
    --help describes the default (else the value, or "off" for None)."""
    return dataclasses.field(default=default, metadata=dict(help=help, flags=tuple(flags), check=check,
                                                            choices=choices, group=group, setting=setting,
                                                            metavar=metavar, positional=positional, shown=shown))


def bounded(convert, ok, rule):
    """The check of a number `convert(text)` for which `ok(number)` holds; else a ValueError "<rule>, got <text>"."""
    def check(text):
        value = convert(text)
        if not ok(value):  # NaN fails every comparison, so it is refused too
            raise ValueError(f"{rule}, got {text}")
        return value
    return check


positive_int = bounded(int, lambda v: v >= 1, "must be at least 1")
non_negative_int = bounded(int, lambda v: v >= 0, "must be at least 0")
positive_float = bounded(float, lambda v: v > 0, "must be greater than 0")
unit_float = bounded(float, lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]")


def devices_value(text):
    """Lightning's --devices: 'auto', a count ('2', '-1' for all) or a list of ids ('0,1')."""
    text = str(text).strip()
    return text if text == "auto" or "," in text else int(text)


@dataclasses.dataclass(frozen=True)
class Config:
    """A config dataclass whose values are checked like flags (type, check, choices) when it is made."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_value(f, hints[f.name], getattr(self, f.name), f.name)


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """What every training run has; a task's config adds its own fields (and epochs, batch_size, lr, data_dir)."""

    seed: int = option(0, "seed for every random number generator (Lightning seed_everything)", check=int)
    deterministic: bool = option(False, "deterministic algorithms only (Trainer(deterministic=True); slower on GPU)",
                                 setting=False)
    resume: str | None = option(None, "continue a run from a checkpoint, in that run's folders: 'last' = the run with "
                                "these settings that wrote a checkpoint most recently, or the path of a .ckpt file",
                                metavar="last|PATH", setting=False)
    num_workers: int = option(0, "DataLoader worker processes (0 is fastest: the data are tensors in memory)",
                              check=non_negative_int, setting=False)
    results_dir: str = option("results", "summaries and figures go to RESULTS_DIR/<task>/<run>/", group="files",
                              setting=False)
    logs_dir: str = option("logs", "TensorBoard logs and checkpoints go to LOGS_DIR/<task>/<run>/", group="files",
                           setting=False)
    run_name: str | None = option(None, "name of the run folder; never reuses an existing folder", group="files",
                                  setting=False, shown="<model>-<date>-<time>")
    debug: bool = option(False, "show the Python traceback of an error instead of one line", group="files",
                         setting=False)
    progress_bar: bool = option(True, "show Lightning's progress bar (redrawn at most twice a second)", group="files",
                                setting=False)
    accelerator: str = option("auto", "cpu, gpu, cuda, mps, tpu or auto", group=TRAINER_GROUP, setting=False)
    devices: int | str = option("auto", "device count, ids like '0,1', -1 for all, or auto", check=devices_value,
                                group=TRAINER_GROUP, setting=False)
    strategy: str = option("auto", "auto, ddp, ddp_spawn, fsdp, ... (multi-GPU / multi-node)", group=TRAINER_GROUP,
                           setting=False)
    num_nodes: int = option(1, "number of machines (with torchrun or SLURM srun)", check=positive_int,
                            group=TRAINER_GROUP, setting=False)
    precision: str = option("32-true", "32-true, 16-mixed, bf16-mixed, ...", group=TRAINER_GROUP)

    def trainer_flags(self):
        return dict(accelerator=self.accelerator, devices=self.devices, strategy=self.strategy,
                    num_nodes=self.num_nodes, precision=self.precision, deterministic=self.deterministic or None)


def _kinds(hint):
    """The plain types an annotation admits: (float, NoneType) for `float | None`, int for `tuple[int, ...]`."""
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[:1]
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _is_list(hint):
    return typing.get_origin(hint) is tuple


def _check_value(f, hint, value, where):
    """Raise a UsageError unless `value` has the field's type, passes its check and is one of its choices."""
    kinds = _kinds(hint)
    if _is_list(hint):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        for item in value:
            _check_value(f, kinds[0], item, where)
        return
    if value is None:
        if type(None) not in kinds:
            raise UsageError(f"{where}: must be given (no default)")
        return
    ok = any(isinstance(value, int) and not isinstance(value, bool) if k is int else
             isinstance(value, (int, float)) and not isinstance(value, bool) if k is float else
             isinstance(value, k) for k in kinds if k is not type(None))
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise UsageError(f"{where}: expected {names}, got {value!r}")
    meta = f.metadata
    try:
        if meta["check"] is not None:
            meta["check"](value)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    if meta["choices"] is not None and value not in meta["choices"]:
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")


def flag_name(name):
    return "--" + name.replace("_", "-")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: ...` and where to read about the flags, exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `python {self.prog} --help`)\n")


def build_parser(config_class, prog, description, epilog=None):
    """The argparse parser of `config_class`: one flag per field (help with its default), grouped."""
    parser = Parser(prog=prog, description=description, epilog=epilog, argument_default=argparse.SUPPRESS,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_class)
    fields = dataclasses.fields(config_class)
    names = sorted({f.metadata["group"] for f in fields}, key=lambda g: (g not in GROUP_ORDER, GROUP_ORDER.index(g)
                                                                            if g in GROUP_ORDER else 0, g))
    groups = {name: parser.add_argument_group(name) for name in names}
    for f in fields:
        meta, kinds = f.metadata, _kinds(hints[f.name])
        default = meta["shown"] or ("off" if f.default is None or f.default is False else
                                    "on" if f.default is True else f.default)
        help_text = f"{meta['help']} (default: {default})"
        group = groups[meta["group"]]
        if bool in kinds:
            group.add_argument(flag_name(f.name), *meta["flags"], dest=f.name, help=help_text,
                               action=argparse.BooleanOptionalAction)
            continue
        convert = meta["check"] or next(k for k in kinds if k is not type(None))

        def parse_value(text, convert=convert):
            try:
                return convert(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        kwargs = dict(type=parse_value, metavar=meta["metavar"] or (None if meta["choices"] else f.name.upper()),
                      choices=meta["choices"], nargs="+" if _is_list(hints[f.name]) else None)
        if meta["positional"]:  # no choices here: argparse would check them against the absent default
            choices = f": {', '.join(map(str, meta['choices']))}" if meta["choices"] else ""
            group.add_argument(f"{f.name}_positional", help=f"same as --{f.name}{choices}",
                               **{**kwargs, "nargs": "?", "choices": None, "metavar": f.name.upper()})
        group.add_argument(flag_name(f.name), *meta["flags"], dest=f.name, help=help_text, **kwargs)
    parser.add_argument("--config", metavar="FILE", help="start from the settings in FILE (a run's config.json); "
                                                         "flags given here win")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return parser


def read_config_file(config_class, path):
    """The fields stored in a config JSON file, checked: unknown keys, wrong types and bad values refused."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--config {path}: not a readable JSON file ({e})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a JSON object of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        _check_value(fields[name], hints[name], value, f"--config {path}: {name}")
    return values


def parse(config_class, argv, prog, description, epilog=None):
    """The config that `argv` asks for: the defaults, then --config FILE, then the flags given."""
    given = vars(build_parser(config_class, prog, description, epilog).parse_args(argv))
    values = read_config_file(config_class, given.pop("config")) if "config" in given else {}
    show = given.pop("print_config", False)
    for key in [k for k in given if k.endswith("_positional")]:
        name, bare = key.removesuffix("_positional"), given.pop(key)
        if given.get(name) not in (None, bare):
            raise UsageError(f"two different values given: {bare} and {flag_name(name)} {given[name]}")
        given[name] = bare
    values = {**values, **given}
    hints = typing.get_type_hints(config_class)
    config = config_class(**{k: tuple(v) if _is_list(hints[k]) else v for k, v in values.items()})
    if show:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        sys.exit(0)
    return config


def settings(config):
    """The fields that decide a run's numbers (`setting=True`), as a dict."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata["setting"]}


def entry_point(argv, commands, train, parse_config):
    """A task script's `main`: the `main(argv)` of the command that a mode flag in `argv` asks for ({flag:
    "module:function"}, imported only then, so a training run never loads prediction or the sweep), else
    training through `run_main`."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    for flag, target in commands.items():
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            module, function = target.split(":")
            return getattr(importlib.import_module(module), function)(argv)
    return run_main(train, argv, parse_config)


def run_main(main, argv, parse_config):
    """`main(parse_config(argv))`; 0, or after a UserError one `error:` line on stderr and its exit code
    (the traceback only with --debug)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        main(parse_config(argv))
        return 0
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
