"""The project's default colourisation training against the plain eager loop a student writes, in one process.

    python benchmarks/colorization.py                  # real horses if ../shared/data has them
    python benchmarks/colorization.py --quick          # 10 train + 3 val batches per epoch
    python benchmarks/colorization.py --accelerator gpu

Both sides train the same net (same initial weights), on the same tensors, at the same batch size
(100), with the same optimiser (AdamW, lr 1e-3), for the same steps, in the same process; the two
sides alternate epoch by epoch (before each project epoch a callback runs one plain epoch), so that
load from other processes on a shared machine hits both alike.

- project: `trainer.fit` of colorization.py's module and DataModule on the Trainer `colorization.train`
  builds, with its callbacks and its defaults: torch.compile and channels-last where they are faster
  (training/speed.py FASTEST), colour quality from the validation pass, progress bar, TensorBoard,
  best + last checkpoints every epoch, the validation image grid.
- plain: a `for` loop over shuffled index slices of the same tensors, eager, NCHW, torch's default
  threads: forward, cross-entropy, backward, optimiser step, pixel accuracy and loss summed; then a
  validation pass (loss, accuracy). No logging, checkpoints, images or colour metrics.

The first --warmup-epochs of each run are not counted (the project's first one holds the compile
warm-up, reported as `warmup_s`: first epoch minus the median of the others), nor is the last one
(it also computes PSNR / SSIM / CIEDE2000, reported as `final_epoch_extra_s`). Figures are medians
over the measured epochs. `quality_share`: the time spent in the colour-quality metric's update and
compute over the validation epochs' time (target <= 5 %). Target for the epoch ratio project / plain:
<= 0.75 on a CPU, <= 1.0 on a GPU. The last line printed is one JSON object with every figure.
"""
import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, begin, elapsed, machine, median, now, print_json, print_table

import pytorch_lightning as pl  # noqa: E402  (after common put the repo on sys.path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

import colorization  # noqa: E402
from data.cifar import CIFARHorses  # noqa: E402
from models.registry import MODELS, build_model  # noqa: E402
from training.config import settings  # noqa: E402
from training.runs import create_run, run_settings  # noqa: E402
from training.speed import Speed  # noqa: E402
from training.trainer import Prepared, build_trainer  # noqa: E402

TARGETS = {"cpu": 0.75, "cuda": 1.0}
QUALITY_TARGET = 0.05
LR = 1e-3


class Interleave(Callback):
    """Runs one plain epoch before each project epoch, and times both and the quality metric."""

    def __init__(self, plain, device):
        self.plain, self.device = plain, device
        self.starts, self.val_starts, self.stops, self.val_times, self.quality_times = [], [], [], [], []
        self._val_start = None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.starts:
            self.stops.append(now(self.device))
        self.plain.epoch()
        self.starts.append(now(self.device))

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._val_start = now(self.device)
            self.val_starts.append(self._val_start)
            self.quality_times.append(0.0)
            metric = pl_module.quality
            for name in ("update", "compute"):
                setattr(metric, name, self._timed(getattr(type(metric), name).__get__(metric)))

    def _timed(self, method):
        def timed(*args, **kwargs):
            start = now(self.device)
            result = method(*args, **kwargs)
            self.quality_times[-1] += elapsed(start, now(self.device))[0]
            return result
        return timed

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_times.append(elapsed(self._val_start, now(self.device))[0])

    def on_train_end(self, trainer, pl_module):
        self.stops.append(now(self.device))

    def epochs(self):
        """[{wall, cpu, train_wall, val_wall, quality}] seconds per project epoch."""
        return [{**epoch_times(a, v, b), "val_wall": vt, "quality": q}
                for a, v, b, vt, q in zip(self.starts, self.val_starts, self.stops, self.val_times, self.quality_times)]


def epoch_times(start, val_start, stop):
    wall, cpu = elapsed(start, stop)
    return {"wall": wall, "cpu": cpu, "train_wall": elapsed(start, val_start)[0]}


def load_data(args, work):
    """A set-up CIFARHorses: the real horses, or synthetic ones of the same size written in the
    official format (5000 train + 1000 val) by the test fixtures' writer."""
    data_dir = Path(args.data_dir) if args.data_dir else SHARED_DATA / "cifar10-horses"
    if args.synthetic or not (data_dir / "cifar-10-batches-py" / "test_batch").exists():
        from tests.fixtures.cifar import write_cifar_folder

        data_dir = work / "synthetic-cifar"
        write_cifar_folder(data_dir, n_per_batch=1000, horse_every=1)
        kind = "synthetic (tests/fixtures/cifar.py, 5000 train + 1000 val horses)"
    else:
        kind = f"real ({data_dir})"
    return data_dir, kind


def project_run(name, data_dir, data, args, device, epochs, work):
    """One trainer.fit of `epochs` epochs on the Trainer colorization.train builds, each epoch preceded
    by a plain one. Returns (project epochs, plain epochs, the plain model, what Speed applied)."""
    config = colorization.ColorizationConfig(
        model=name, epochs=epochs, batch_size=args.batch_size, lr=LR, data_dir=str(data_dir),
        results_dir=str(work / "results"), logs_dir=str(work / "logs"), accelerator=args.accelerator, devices=1,
        compile=args.compile, channels_last=args.channels_last, progress_bar=not args.no_progress_bar)
    plain = PlainLoop(name, data, args, device)
    pl.seed_everything(0, verbose=False)  # the same initial weights as the plain model's
    dm = CIFARHorses(data_dir=data_dir, batch_size=args.batch_size, download=False)
    dm.setup("fit")
    module = colorization.ColorizationModule(model=name, palette=dm.palette.tolist(), lr=LR)
    prepared = Prepared(module, dm, run_settings("colorization", settings(config), dm.settings()))
    timer = Interleave(plain, device)
    callbacks = colorization.trainer_callbacks(config, prepared)
    limits = dict(limit_train_batches=args.train_batches, limit_val_batches=args.val_batches) if args.quick else {}
    trainer, _ = build_trainer(create_run("colorization", name, work / "results", work / "logs"), config,
                               "val/loss", "min", callbacks=[*callbacks, timer], **limits)
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bar writes to stdout
        trainer.fit(module, datamodule=dm)
    speed = next(c for c in callbacks if isinstance(c, Speed)).applied
    return timer.epochs(), plain.times, plain.model, speed


def batches(n, batch_size, limit, perm):
    for step, start in enumerate(range(0, n, batch_size)):
        if limit is not None and step == limit:
            return
        yield perm[start:start + batch_size]


class PlainLoop:
    """The same training as the loop a student writes, one epoch per `epoch()` call; `times` per epoch."""

    def __init__(self, name, data, args, device):
        (self.train_x, self.train_y), (self.val_x, self.val_y) = data
        self.args, self.device = args, device
        pl.seed_everything(0, verbose=False)  # the module's weights are drawn after this seed too
        self.model = build_model(name).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR)
        self.times = []

    def epoch(self):
        args, device, model, opt = self.args, self.device, self.model, self.opt
        t0 = now(device)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        perm = torch.randperm(len(self.train_x), device=device)
        for idx in batches(len(perm), args.batch_size, args.train_batches if args.quick else None, perm):
            x, y = self.train_x[idx], self.train_y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        float(loss_sum), int(correct)  # the epoch's values reach the host once, as logging would
        t1 = now(device)
        evaluate(model, self.val_x, self.val_y, args.batch_size, args.val_batches if args.quick else None, device)
        self.times.append(epoch_times(t0, t1, now(device)))


@torch.no_grad()
def evaluate(model, x_all, y_all, batch_size, limit, device):
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for idx in batches(len(x_all), batch_size, limit, torch.arange(len(x_all), device=device)):
        logits = model(x_all[idx])
        loss_sum += F.cross_entropy(logits, y_all[idx]) * len(idx)
        correct += (logits.argmax(1) == y_all[idx]).sum()
    return float(loss_sum), int(correct)


def summarise(name, project, plain, n_train, warmup, speed):
    """Medians over the measured epochs of both sides, their ratio, warm-up and quality share."""
    measured, others = project[warmup:-1], plain[warmup:-1]
    res = {"model": name, "compile": speed["compile"], "channels_last": speed["channels_last"],
           "project_epoch_s": median([e["wall"] for e in measured]),
           "plain_epoch_s": median([e["wall"] for e in others]),
           "project_train_images_per_s": n_train / median([e["train_wall"] for e in measured]),
           "plain_train_images_per_s": n_train / median([e["train_wall"] for e in others]),
           "epochs_measured": len(measured)}
    res["ratio"] = res["project_epoch_s"] / res["plain_epoch_s"]
    res["paired_ratio"] = median([a["wall"] / b["wall"] for a, b in zip(measured, others)])
    res["warmup_s"] = project[0]["wall"] - res["project_epoch_s"]
    res["final_epoch_extra_s"] = project[-1]["wall"] - res["project_epoch_s"]
    res["quality_share"] = sum(e["quality"] for e in measured) / sum(e["val_wall"] for e in measured)
    res["validation_epoch_s"] = median([e["val_wall"] for e in measured])
    res["project_epochs_s"] = [round(e["wall"], 3) for e in project]
    res["plain_epochs_s"] = [round(e["wall"], 3) for e in plain]
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help="folder with cifar-10-batches-py/ (default ../shared/data/cifar10-horses; synthetic if absent)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic horses even when real data exists")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3, help="measured epochs per model")
    p.add_argument("--warmup-epochs", type=int, default=1, help="uncounted epochs at the start (compile warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="epochs of --train-batches / --val-batches batches only")
    p.add_argument("--train-batches", type=int, default=10)
    p.add_argument("--val-batches", type=int, default=3)
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="the project side's --compile (default: the project's default for the device)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the project side's --channels-last (default: the project's default for the device)")
    p.add_argument("--no-progress-bar", action="store_true", help="the project side without its progress bar")
    p.add_argument("--work-dir", default=None, help="where runs and synthetic data go (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = begin(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        data_dir, data_kind = load_data(args, work)
        dm = CIFARHorses(data_dir=data_dir, download=False)
        dm.setup("fit")
        data = [tuple(t.to(device) for t in ds.tensors[:2]) for ds in (dm.train_set, dm.val_set)]
        epochs = args.warmup_epochs + args.epochs + 1
        rows, results = [], []
        for name in args.models:
            project, plain, _, speed = project_run(name, data_dir, data, args, device, epochs, work)
            n_train = min(len(data[0][0]), args.train_batches * args.batch_size) if args.quick else len(data[0][0])
            res = summarise(name, project, plain, n_train, args.warmup_epochs, speed)
            results.append(res)
            rows.append([name, "on" if speed["compile"] else "off", "on" if speed["channels_last"] else "off",
                         f"{res['project_epoch_s']:.2f}", f"{res['plain_epoch_s']:.2f}", f"{res['ratio']:.3f}",
                         f"{res['paired_ratio']:.3f}", f"{res['project_train_images_per_s']:.0f}",
                         f"{res['plain_train_images_per_s']:.0f}", f"{res['warmup_s']:.1f}",
                         f"{100 * res['quality_share']:.1f} %"])
    facts = machine(device)
    target = TARGETS.get(device.type, 1.0)
    steps = (f"{args.train_batches} train + {args.val_batches} val batches" if args.quick
             else "5000 train + 1000 val images")
    print(f"\ncolorization: the project's default training vs the plain eager loop, batch {args.batch_size}, "
          f"{steps} per epoch")
    print(f"data: {data_kind}; machine: {facts['cpu']}, {facts['cpu_count']} cores, {facts['torch_threads']} torch "
          f"threads{', ' + facts['gpu'] if 'gpu' in facts else ''}; medians of {results[0]['epochs_measured']} epochs "
          f"per side, the sides alternating epoch by epoch; {time.perf_counter() - start:.0f} s in all\n")
    print_table(["model", "compile", "channels-last", "project s/epoch", "plain s/epoch", "ratio", "paired ratio",
                 "project train img/s", "plain train img/s", "warm-up s", "quality share"], rows)
    worst = max(r["ratio"] for r in results)
    share = max(r["quality_share"] for r in results)
    print(f"\ntarget: ratio <= {target} for every model: {'met' if worst <= target else 'MISSED'} (worst {worst:.3f}); "
          f"colour quality <= {100 * QUALITY_TARGET:.0f} % of a validation epoch: "
          f"{'met' if share <= QUALITY_TARGET else 'MISSED'} (worst {100 * share:.1f} %)")
    print_json({"benchmark": "colorization", "quick": args.quick, "batch_size": args.batch_size, "data": data_kind,
                "machine": facts, "target_ratio": target, "target_met": worst <= target,
                "quality_target": QUALITY_TARGET, "quality_target_met": share <= QUALITY_TARGET,
                "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results]})


if __name__ == "__main__":
    main()
