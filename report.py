"""One command that answers the homework's questions with numbers it measures: `results/REPORT.md`.

    python report.py            # the whole report; its header states how long this invocation took
                                # (from scratch on this project's 2-core Intel Xeon CPU machine: 19.3 min)
    python report.py --quick    # a smoke run: 1 epoch per run, into $XDG_CACHE_HOME/image2image/report-quick/

It trains what is missing and reuses runs already finished with the same settings
(training/runs.py `reuse_or_train`), so an interrupted report resumes and a second call trains nothing:
- the three colourisation models (homework defaults: 25 epochs, batch 100, kernel 3, NF 32), `--seeds N`
  times each, and UNet with class rebalancing (`--rebalance 0.5`) as often;
- the batch-size sweep with ConvTransposeNet (colorization_sweep.py; 10 epochs per batch size);
- segmentation with CE and with the soft IoU loss, `--seg-seeds N` times each (3 by default: after the
  first run the feature store makes each about 20 s): COCO-pretrained DeepLabV3-ResNet101 when its weights
  file is in the torch hub cache, else a pipeline check with a random frozen ResNet-50.
The runs are independent, so with `--jobs N` they train in N worker processes (reporting/jobs.py). Then
it measures what the runs did not record (edge vs flat errors, decodings; reporting/measures.py) and
writes REPORT.md (reporting/document.py): one section per item of the homework's submission list, each
comparison sentence generated from the numbers (reporting/claims.py), the figures copied into
RESULTS_DIR/report/ so that the report and its figures can be committed together.
"""
import dataclasses
import functools
import os
import sys
import time
import warnings
from pathlib import Path

from color.palette import DEFAULT_TEMPERATURE
from errors import UsageError
from losses.registry import LOSSES as SEG_LOSSES
from training.config import Config, option, parse, positive_float, positive_int, run_main

REPO = Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / "shared" / "data"
COLOUR_MODELS = ("PoolUpsampleNet", "ConvTransposeNet", "UNet")
REBALANCE = 0.5  # Zhang et al.'s lambda
# --jobs default, measured on this project's 2-core AMD EPYC machine (shared: load average 6-7 from other
# processes), two UNet runs of 3 epochs on ../shared/data/cifar10-horses, compiled as by default: one 2-thread
# process training them in turn took 597 s and 583 s, two 1-thread processes 309 s and 250 s (1.9-2.3x the
# throughput; 1.1-1.25x when that machine was idle). On the later Intel Xeon (2 cores, idle), the
# same comparison (whole processes, start-up included): 39.3 s / 38.1 s against 27.4 s / 26.7 s, 1.43-1.44x.
# So: one single-threaded worker per core.
THREADS_PER_JOB = 1


def default_data_dir(shared_name, fallback):
    """../shared/data/<name> when present (this workplace), else the CLIs' default folder."""
    shared = SHARED_DATA / shared_name
    return str(shared) if shared.is_dir() else fallback


def quick_root():
    """Where --quick writes by default: a cache folder of the user's, never the checkout."""
    from data.download import cache_base

    return cache_base() / "report-quick"


@dataclasses.dataclass(frozen=True)
class ReportConfig(Config):
    quick: bool = option(False, "smoke run: 1 epoch per run, segmentation at 64 px with 2 seeds, results in "
                         "$XDG_CACHE_HOME/image2image/report-quick/ (flags given still win)")
    data_dir_cifar: str = option(default_data_dir("cifar10-horses", "datasets"), "CIFAR-10 folder (holds "
                                 "cifar-10-batches-py/ or the archive)", group="files")
    data_dir_oxford17: str = option(default_data_dir("oxford17", "datasets/oxford17"), "Oxford17 folder (jpg/, "
                                    "trimaps/ [, datasplits.mat] or the archives)", group="files")
    results_dir: str | None = option(None, "runs, REPORT.md and report/ go here", group="files",
                                     shown="results; --quick: the cache folder above")
    logs_dir: str | None = option(None, "TensorBoard logs, checkpoints and the runs' console logs", group="files",
                                  shown="logs; --quick: the cache folder above")
    epochs: int | None = option(None, "epochs of each colourisation model run", check=positive_int, group="model",
                                shown="25; --quick: 1")
    batch_size: int = option(100, "batch size of the model runs", check=positive_int, group="model")
    kernel: int = option(3, "kernel size", check=positive_int, group="model")
    num_filters: int = option(32, "NF", check=positive_int, group="model")
    lr: float = option(1e-3, "learning rate of the colourisation runs", check=positive_float, group="model")
    seed: int = option(0, "seed of the first run of each kind; repeats use seed+1, seed+2, ...", check=int,
                       group="model")
    seeds: int | None = option(None, "runs per colourisation model (and of the rebalanced UNet), one seed each",
                               check=positive_int, group="model", shown="1 on a CPU, 3 with a GPU")
    sweep_model: str = option("ConvTransposeNet", "model of the batch-size sweep", choices=COLOUR_MODELS,
                              group="model")
    sweep_batch_sizes: tuple[int, ...] = option((32, 64, 128, 256, 512), "batch sizes of the sweep (homework: Q5 "
                                                "in 1.2)", check=positive_int, metavar="B", group="model")
    sweep_epochs: int | None = option(None, "epochs per sweep run", check=positive_int, group="model",
                                      shown="10, modest for a CPU; --quick: 1")
    decode_model: str = option("UNet", "model whose decodings (argmax vs annealed mean) are compared",
                               choices=COLOUR_MODELS, group="model")
    temperature: float = option(DEFAULT_TEMPERATURE, "annealed-mean temperature T", check=positive_float,
                                group="model")
    seg_weights: str = option("auto", "auto: coco when its weights file is in the torch hub cache, else none",
                              choices=("auto", "coco", "none"), group="segmentation")
    seg_backbone: str | None = option(None, "DeepLabV3 backbone", choices=("resnet101", "resnet50",
                                      "mobilenet_v3_large"), group="segmentation",
                                      shown="resnet101 with coco weights, resnet50 with none")
    seg_image_size: int | None = option(None, "image size", check=positive_int, group="segmentation",
                                        shown="224 with coco weights, 128 with none; --quick: 64")
    seg_epochs: int | None = option(None, "epochs per segmentation run", check=positive_int, group="segmentation",
                                    shown="10; --quick: 1")
    seg_batch_size: int = option(16, "batch size", check=positive_int, group="segmentation")
    seg_lr: float = option(1e-3, "learning rate", check=positive_float, group="segmentation")
    seg_seeds: int | None = option(None, "runs per loss, one seed each", check=positive_int, group="segmentation",
                                   shown="3; --quick: 2")
    jobs: int | None = option(None, "runs trained at the same time, each in its own process", check=positive_int,
                              group="speed", shown=f"one per {THREADS_PER_JOB} CPU core(s) on a CPU, 1 with a GPU")
    compile: bool | None = option(None, "torch.compile the colourisation nets (a performance flag: same numbers)",
                                  group="speed", shown="on where it is faster")
    accelerator: str = option("auto", "Lightning accelerator of every run (cpu, gpu, auto)", group="speed")
    debug: bool = option(False, "show tracebacks instead of one-line errors", group="files")


def parse_config(argv=None):
    return parse(ReportConfig, argv, "report.py", "Train what is missing, reuse finished runs, and write "
                 "RESULTS_DIR/REPORT.md with figures.", "example: python report.py --quick   (a smoke run)")


def uses_gpu(accelerator):
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def coco_weights(backbone):
    """(path in the torch hub cache, URL, whether it is a stand-in) of torchvision's COCO weights of `backbone`."""
    from models.deeplabv3 import BACKBONES, STANDIN_SUFFIX, weights_path

    path = Path(weights_path(backbone))
    return path, BACKBONES[backbone][1].url, Path(str(path) + STANDIN_SUFFIX).exists()


def resolve(config):
    """The config with every default that depends on --quick, the weights found and the machine filled in."""
    quick, gpu = config.quick, uses_gpu(config.accelerator)
    root = quick_root()
    weights = config.seg_weights
    if weights == "auto":
        path, _, standin = coco_weights(config.seg_backbone or "resnet101")
        weights = "coco" if path.is_file() and not standin else "none"
    values = dict(
        results_dir=config.results_dir or str(root / "results" if quick else "results"),
        logs_dir=config.logs_dir or str(root / "logs" if quick else "logs"),
        epochs=config.epochs or (1 if quick else 25), sweep_epochs=config.sweep_epochs or (1 if quick else 10),
        seg_epochs=config.seg_epochs or (1 if quick else 10), seg_weights=weights,
        seg_backbone=config.seg_backbone or ("resnet101" if weights == "coco" else "resnet50"),
        seg_image_size=config.seg_image_size or (64 if quick else 224 if weights == "coco" else 128),
        seeds=config.seeds or (3 if gpu and not quick else 1), seg_seeds=config.seg_seeds or (2 if quick else 3))
    runs = len(plan(dataclasses.replace(config, **values))[0])
    values["jobs"] = config.jobs or (1 if gpu else max(1, min(runs, (os.cpu_count() or 1) // THREADS_PER_JOB)))
    return dataclasses.replace(config, **values)


# ----------------------------------------------------------------------------- the runs

def colour_config(config, model, seed, **changes):
    import colorization

    return colorization.ColorizationConfig(**{
        **dict(model=model, epochs=config.epochs, batch_size=config.batch_size, kernel=config.kernel,
               num_filters=config.num_filters, lr=config.lr, seed=seed, data_dir=config.data_dir_cifar,
               results_dir=config.results_dir, logs_dir=config.logs_dir, accelerator=config.accelerator, devices=1,
               compile=config.compile, progress_bar=not config.jobs or config.jobs == 1), **changes})


def sweep_config(config):
    import colorization_sweep

    base = colour_config(config, config.sweep_model, config.seed, epochs=config.sweep_epochs)
    return colorization_sweep.SweepConfig(**{**dataclasses.asdict(base), "batch_sizes": config.sweep_batch_sizes})


def seg_config(config, loss, seed):
    import segmentation

    return segmentation.SegmentationConfig(
        loss=loss, backbone=config.seg_backbone, weights=config.seg_weights, image_size=config.seg_image_size,
        epochs=config.seg_epochs, batch_size=config.seg_batch_size, lr=config.seg_lr, seed=seed,
        data_dir=config.data_dir_oxford17, results_dir=config.results_dir, logs_dir=config.logs_dir,
        accelerator=config.accelerator, devices=1, progress_bar=not config.jobs or config.jobs == 1)


def plan(config):
    """The report's runs as jobs ({kind, key, seed} in `meta`), the longest first so that parallel workers
    finish together; the segmentation runs after the first wait for it, which fills the feature store."""
    import colorization
    import colorization_sweep
    import segmentation
    from reporting.jobs import Job
    from reporting.reuse import reuse_or_train

    seeds = [config.seed + i for i in range(config.seeds)]
    seg_seeds = [config.seed + i for i in range(config.seg_seeds)]
    jobs, meta = [], {}
    colour_run = functools.partial(reuse_or_train, colorization.TASK, colorization.prepare, colorization.train)
    seg_run = functools.partial(reuse_or_train, segmentation.TASK, segmentation.prepare, segmentation.train)

    def add(name, train, run_config, kind, key, seed, after=()):
        jobs.append(Job(name, train, run_config, tuple(after)))
        meta[name] = {"kind": kind, "key": key, "seed": seed}

    for seed in seeds:
        for model in COLOUR_MODELS:
            add(f"colorization {model} seed {seed}", colour_run, colour_config(config, model, seed),
                "colour", model, seed)
        add(f"colorization UNet --rebalance {REBALANCE:g} seed {seed}", colour_run,
            colour_config(config, "UNet", seed, rebalance=REBALANCE), "rebalanced", "UNet", seed)
    first_loss = next(iter(SEG_LOSSES))
    first = f"segmentation {first_loss} seed {seg_seeds[0]}"
    add(first, seg_run, seg_config(config, first_loss, seg_seeds[0]), "seg", first_loss, seg_seeds[0])
    for b, run_config in colorization_sweep.run_configs(sweep_config(config)):
        add(f"sweep {config.sweep_model} batch {b}", colour_run, run_config, "sweep", b, config.seed)
    for seed in seg_seeds:
        for loss in SEG_LOSSES:
            name = f"segmentation {loss} seed {seed}"
            if name != first:
                add(name, seg_run, seg_config(config, loss, seed), "seg", loss, seed, [first])
    return jobs, meta


def group(results, meta):
    """{kind: {key: [summaries, by seed]}} and {"<task>/<run>": trained now} from run_jobs' results."""
    grouped, trained = {}, {}
    for name, (summary, new) in results.items():
        m = meta[name]
        grouped.setdefault(m["kind"], {}).setdefault(m["key"], []).append(summary)
        trained[f"{summary['task']}/{summary['run']}"] = bool(new)
    return grouped, trained


# ----------------------------------------------------------------------------- measurements with the nets

def run_weights(config, summary):
    """The run's best weights (model.pt in its results folder, shipped with it), else its last checkpoint."""
    from inference.checkpoints import summary_checkpoint

    weights = Path(config.results_dir) / summary["task"] / summary["run"] / "model.pt"
    if weights.is_file():
        return weights
    return summary_checkpoint(summary, "last", config.logs_dir, config.results_dir)


def measure(config, grouped, figures, log):
    """What the runs did not record: edge vs flat RGB errors per model and seed, argmax vs annealed decodings,
    and the figures of the decodings and the rebalancing comparison."""
    import torch

    from data.cifar import CIFARHorses
    from inference.colorize import load_colorizer
    from reporting.decodings import decoding_metrics, decoding_rows
    from reporting.figures import save_image_rows
    from reporting.measures import edge_masks, region_errors
    from reporting.rebalancing import rebalancing_figure

    data = CIFARHorses(data_dir=config.data_dir_cifar, batch_size=config.batch_size)
    data.prepare_data()
    data.setup("fit")
    grey, target, rgb = data.val_set.tensors
    masks = edge_masks(grey)
    out = {"masks": {k: v for k, v in masks.items() if k not in ("edge", "flat")}, "regions": {}, "images": len(grey)}
    nets = {}

    def net(summary):
        path = run_weights(config, summary)
        if path is None:
            return None
        if str(path) not in nets:
            nets[str(path)] = load_colorizer(path)[0]
        return nets[str(path)]

    with torch.no_grad():
        for model in ("ConvTransposeNet", "UNet"):
            values = []
            for summary in grouped["colour"][model]:
                m = net(summary)
                values.append(None if m is None else region_errors(m, grey, rgb, data.palette, masks))
            out["regions"][model] = values
        log(f"decodings: argmax vs annealed mean (T = {config.temperature:g}) with {config.decode_model}")
        summary = grouped["colour"][config.decode_model][0]
        m = net(summary)
        out["decode_summary"] = summary
        if m is not None:
            out["decodings"] = decoding_metrics(m, grey, target, rgb, data.palette, config.temperature)
            g, _, truth = data.sample_batch(8)
            save_image_rows(decoding_rows(m, g, truth, data.palette, config.temperature), figures.path("decodings.png"),
                            f"{summary['model']} after {summary['epochs']} epochs: argmax vs annealed mean "
                            f"(T = {config.temperature:g}), validation images")
        plain, rebalanced = grouped["colour"]["UNet"][0], grouped["rebalanced"]["UNet"][0]
        if net(plain) is not None and net(rebalanced) is not None:
            rebalancing_figure(net(plain), net(rebalanced), data.sample_batch(8), data.palette, config.temperature,
                               REBALANCE, figures.path("rebalancing.png"))
    out["train_images"], out["palette"] = data.source["train"], data.palette.tolist()
    return out


def oxford_split(config):
    """(split source, counts per split), from the file names only (no image is decoded)."""
    from data.oxford17 import Oxford17

    data = Oxford17(data_dir=config.data_dir_oxford17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = data.splits()
    return data.split_source, {k: len(v) for k, v in splits.items()}


def check_cifar(config):
    """Fail in one line before any training when the CIFAR-10 data is missing."""
    from data.cifar import CIFARHorses

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CIFARHorses(data_dir=config.data_dir_cifar).prepare_data()


def parameter_counts(config, colours):
    """Trainable parameters of each net with the report's kernel and NF."""
    from models.registry import build_model

    return {m: sum(p.numel() for p in build_model(m, kernel=config.kernel, num_in_channels=1,
                                                   num_filters=config.num_filters, num_colours=colours).parameters())
            for m in COLOUR_MODELS}


# ----------------------------------------------------------------------------- main

def make_report(config, argv=(), log=print):
    """Train or reuse every run, measure, and write RESULTS_DIR/REPORT.md; returns its path."""
    import colorization_sweep
    from files import atomic_write_text
    from reporting.document import Figures, render
    from reporting.jobs import run_jobs
    from reporting.rebalancing import recall_figure
    from training.trainer import describe_machine

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("report.py starts its own processes (--jobs), each run on one device; start it with "
                         "python, not torchrun / srun")
    start = time.perf_counter()
    config = resolve(config)
    results = Path(config.results_dir)
    figures = Figures(results / "report")
    oxford = oxford_split(config)  # both data sets fail early, before any training, when missing
    check_cifar(config)
    jobs, meta = plan(config)
    threads = max(1, (os.cpu_count() or 1) // config.jobs) if config.jobs > 1 else None
    log(f"report: {len(jobs)} runs, {config.jobs} at a time" + (f", {threads} torch thread(s) each" if threads else ""))
    done = run_jobs(jobs, config.jobs, threads, Path(config.logs_dir) / "report", log)
    grouped, trained = group(done, meta)
    sweep_summaries = [s for _, (s,) in sorted((b, v) for b, v in grouped["sweep"].items())]
    sweep = colorization_sweep.write_sweep(sweep_config(config), sorted(grouped["sweep"]), sweep_summaries,
                                           sum(trained[f"{x['task']}/{x['run']}"] for x in sweep_summaries), log)
    measured = measure(config, grouped, figures, log)
    recall_figure({"plain CE": grouped["colour"]["UNet"][0]["colour_quality"],
                   f"rebalanced {REBALANCE:g}": grouped["rebalanced"]["UNet"][0]["colour_quality"]},
                  "UNet: recall per palette colour on the validation images (first seed)",
                  figures.path("rebalancing_recall.png"))
    ctx = {"config": config, "argv": list(argv), "machine": describe_machine(), "figures": figures,
           "colour": grouped["colour"], "rebalanced": grouped["rebalanced"]["UNet"], "sweep": sweep,
           "seg": grouped["seg"], "trained": trained, "measured": measured, "oxford_split": oxford,
           "coco": coco_weights("resnet101"), "params": parameter_counts(config, len(measured["palette"])),
           "repo": REPO, "threads": threads, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    ctx["wall_seconds"] = time.perf_counter() - start  # everything but writing the file itself
    path = atomic_write_text(results / "REPORT.md", render(ctx))
    figures.prune()
    log(f"report: {path} written; {sum(trained.values())} of {len(trained)} runs trained now; this invocation took "
        f"{ctx['wall_seconds']:.0f} s ({ctx['wall_seconds'] / 60:.1f} min)")
    return path


def main(argv=None):
    from training.trainer import quiet_known_warnings

    quiet_known_warnings()
    warnings.filterwarnings("ignore", message=r".*randomly initialised.*")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return run_main(lambda config: make_report(config, argv), argv, parse_config)


if __name__ == "__main__":
    sys.exit(main())
