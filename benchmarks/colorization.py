"""Lightning path vs a bare PyTorch loop for colorization, in one process: the overhead ratio.

    python benchmarks/colorization.py                  # real horses if ../shared/data has them
    python benchmarks/colorization.py --quick          # 10 train + 3 val batches per epoch
    python benchmarks/colorization.py --accelerator gpu --precision 16-mixed

Both sides train the same model (same initial weights), on the same tensors, at the same batch size
(100), with the same optimiser (AdamW, lr 1e-3), for the same steps, in the same process. The two
sides alternate epoch by epoch: before each Lightning epoch a callback runs one bare epoch (its own
model and optimiser), so that load from other processes on a shared machine hits both alike. The
first --warmup-epochs of every run are not counted; figures are medians over the measured epochs
(--epochs per run, --repeats runs). What each side does per epoch:

- Lightning: `trainer.fit` of colorization.py's ColorizationModule with CIFARHorses, on the Trainer
  the CLI builds (training/trainer.py: progress bar, TensorBoard epoch scalars, EpochHistory, best +
  last checkpoint written every epoch) plus the CLI's validation_grid callback (a TensorBoard image grid
  every epoch). Per step: forward, cross-entropy, backward, optimiser step, pixel accuracy
  (torchmetrics) and the epoch means of loss and accuracy; then a validation pass (loss, accuracy).
- bare: a `for` loop over shuffled index slices of the same tensors: forward, cross-entropy,
  backward, optimiser step, the predicted colour per pixel compared with the target and summed
  (pixel accuracy) and the loss summed, on the device; then a validation pass (loss, accuracy). No
  logging, checkpoints or images: what those cost is part of the measured overhead.

A Lightning epoch is timed from the end of its bare twin to the start of the next one (the last to
`on_train_end`), so it includes everything Lightning does between epochs. Both wall-clock and CPU
time (of this process) are reported: CPU time does not count waiting for a core that another process
holds. Training images/s count the training phase only (to the start of validation); inference
images/s time `model(x)` plus the per-pixel argmax in eval mode without gradients, batch
--batch-size, over the validation images. The last line printed is one JSON object with every figure.
"""
import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from common import SHARED_DATA, elapsed, machine, median, now, print_json, print_table, quiet, setup_device

import pytorch_lightning as pl  # noqa: E402  (after common put the repo on sys.path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

from colorization import ColorizationModule, validation_grid  # noqa: E402
from data.cifar import CIFARHorses  # noqa: E402
from models import MODELS, build_model  # noqa: E402
from training.callbacks import ChannelsLast  # noqa: E402
from training.runs import create_run  # noqa: E402
from training.task import build_trainer  # noqa: E402

TARGET = 1.15
LR = 1e-3


class Interleave(Callback):
    """Runs one bare epoch before each Lightning epoch and times both (device synchronised)."""

    def __init__(self, bare, device):
        self.bare, self.device = bare, device
        self.starts, self.val_starts, self.stops = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        if self.starts:
            self.stops.append(now(self.device))
        self.bare.epoch()
        self.starts.append(now(self.device))

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_starts.append(now(self.device))

    def on_train_end(self, trainer, pl_module):
        self.stops.append(now(self.device))

    def epochs(self):
        """[{wall, cpu, train_wall}] seconds per Lightning epoch (train_wall: the training phase)."""
        return [epoch_times(a, v, b) for a, v, b in zip(self.starts, self.val_starts, self.stops)]


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
    dm = CIFARHorses(data_dir=data_dir, batch_size=args.batch_size, download=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm, kind


def interleaved_run(name, dm, data, args, device, epochs, work):
    """One trainer.fit of `epochs` epochs on the CLI's Trainer, each epoch preceded by a bare one.
    Returns (Lightning epochs, bare epochs, the bare model)."""
    bare = BareLoop(name, data, args, device)
    pl.seed_everything(0, verbose=False)  # the same initial weights as the bare model's
    module = ColorizationModule(model=name, num_colours=dm.num_colours, num_filters=args.num_filters, lr=LR,
                                optimizer="adamw")
    run = create_run("colorization", name, work / "results", work / "logs")
    timer = Interleave(bare, device)
    flags = dict(accelerator=args.accelerator, devices=1, precision=args.precision)
    limits = dict(limit_train_batches=args.train_batches, limit_val_batches=args.val_batches) if args.quick else {}
    trainer, _, _ = build_trainer(run, epochs, "val/loss", "min", flags,
                                  callbacks=[validation_grid(), ChannelsLast(args.channels_last), timer], **limits)
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bar writes to stdout
        trainer.fit(module, datamodule=dm)
    return timer.epochs(), bare.times, bare.model


def batches(n, batch_size, limit, perm):
    for step, start in enumerate(range(0, n, batch_size)):
        if limit is not None and step == limit:
            return
        yield perm[start:start + batch_size]


class BareLoop:
    """The same training as a plain loop, one epoch per `epoch()` call; `times` per epoch."""

    def __init__(self, name, data, args, device):
        (self.train_x, self.train_y), (self.val_x, self.val_y) = data
        self.args, self.device = args, device
        pl.seed_everything(0, verbose=False)  # the module's weights are drawn after this seed too
        self.model = build_model(name, num_colours=args.num_colours, num_filters=args.num_filters).to(device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR)
        self.mixed = args.precision in ("16-mixed", "bf16-mixed")
        self.dtype = torch.float16 if args.precision == "16-mixed" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type) if args.precision == "16-mixed" else None
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
            with torch.autocast(device.type, dtype=self.dtype, enabled=self.mixed):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                opt.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(opt)
                self.scaler.update()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().max(1).indices == y).sum()
        float(loss_sum), int(correct)  # the epoch's values reach the host once, as logging would
        t1 = now(device)
        evaluate(model, self.val_x, self.val_y, args.batch_size, args.val_batches if args.quick else None,
                 self.mixed, self.dtype, device)
        self.times.append(epoch_times(t0, t1, now(device)))


@torch.no_grad()
def evaluate(model, x_all, y_all, batch_size, limit, mixed, dtype, device):
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for idx in batches(len(x_all), batch_size, limit, torch.arange(len(x_all), device=device)):
        x, y = x_all[idx], y_all[idx]
        with torch.autocast(device.type, dtype=dtype, enabled=mixed):
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y) * len(y)
        correct += (logits.max(1).indices == y).sum()
    return float(loss_sum), int(correct)


@torch.no_grad()
def inference_rate(model, x_all, batch_size, device, precision, repeats=5):
    """Images/s of model(x) + per-pixel argmax in eval mode, batches of `batch_size` (median)."""
    model.eval()
    mixed = precision in ("16-mixed", "bf16-mixed")
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    n = min(len(x_all), 1000)
    rates = []
    for r in range(repeats + 1):
        t0 = now(device)
        for start in range(0, n, batch_size):
            with torch.autocast(device.type, dtype=dtype, enabled=mixed):
                model(x_all[start:start + batch_size]).max(1).indices
        if r:  # the first pass warms up
            rates.append(n / elapsed(t0, now(device))[0])
    return median(rates)


def summarise(name, light, bare, n_train, model):
    """Medians over the measured epochs of both sides and their ratios (wall clock and CPU time)."""
    res = {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "lightning_epoch_s": median([e["wall"] for e in light]),
        "bare_epoch_s": median([e["wall"] for e in bare]),
        "lightning_epoch_cpu_s": median([e["cpu"] for e in light]),
        "bare_epoch_cpu_s": median([e["cpu"] for e in bare]),
        "lightning_train_images_per_s": n_train / median([e["train_wall"] for e in light]),
        "bare_train_images_per_s": n_train / median([e["train_wall"] for e in bare]),
        "epochs_measured": len(light),
    }
    res["ratio"] = res["lightning_epoch_s"] / res["bare_epoch_s"]
    # each Lightning epoch against the bare epoch run just before it: robust to slow drifts in load
    res["paired_ratio"] = median([a["wall"] / b["wall"] for a, b in zip(light, bare)])
    res["lightning_epochs_s"] = [round(e["wall"], 3) for e in light]
    res["bare_epochs_s"] = [round(e["wall"], 3) for e in bare]
    res["cpu_ratio"] = res["lightning_epoch_cpu_s"] / res["bare_epoch_cpu_s"]
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help="folder with cifar-10-batches-py/ (default ../shared/data/cifar10-horses; synthetic if absent)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic horses even when real data exists")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--num-filters", type=int, default=32,
                   help="NF of the models (32 as the CLI; a tiny value shows the fixed per-step overhead)")
    p.add_argument("--epochs", type=int, default=3, help="measured epochs per run")
    p.add_argument("--warmup-epochs", type=int, default=1, help="uncounted epochs at the start of every run")
    p.add_argument("--repeats", type=int, default=1, help="runs (trainer.fit calls) per model")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="epochs of --train-batches / --val-batches batches only")
    p.add_argument("--train-batches", type=int, default=10)
    p.add_argument("--val-batches", type=int, default=3)
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format on both sides (default: as the CLIs, on for CUDA only)")
    p.add_argument("--work-dir", default=None, help="where runs and synthetic data go (default: a temporary folder)")
    args = p.parse_args(argv)
    args.num_colours = None
    return args


def main(argv=None):
    quiet()
    args = parse_args(argv)
    device = setup_device(args)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        dm, data_kind = load_data(args, work)
        args.num_colours = dm.num_colours
        data = [tuple(t.to(device) for t in ds.tensors) for ds in (dm.train_set, dm.val_set)]
        epochs = args.warmup_epochs + args.epochs
        rows, results = [], []
        for name in args.models:
            light, bare = [], []
            for _ in range(args.repeats):
                light_times, bare_times, model = interleaved_run(name, dm, data, args, device, epochs, work)
                light += light_times[args.warmup_epochs:]
                bare += bare_times[args.warmup_epochs:]
            n_train = min(len(data[0][0]), args.train_batches * args.batch_size) if args.quick else len(data[0][0])
            res = summarise(name, light, bare, n_train, model)
            res["inference_images_per_s"] = inference_rate(model, data[1][0], args.batch_size, device, args.precision)
            results.append(res)
            rows.append([name, f"{res['parameters']:,}", f"{res['lightning_epoch_s']:.2f}", f"{res['bare_epoch_s']:.2f}",
                         f"{res['ratio']:.3f}", f"{res['paired_ratio']:.3f}", f"{res['cpu_ratio']:.3f}", f"{res['lightning_train_images_per_s']:.0f}",
                         f"{res['bare_train_images_per_s']:.0f}", f"{res['inference_images_per_s']:.0f}"])
    facts = machine(device)
    steps = f"{args.train_batches} train + {args.val_batches} val batches" if args.quick else "5000 train + 1000 val images"
    print(f"\ncolorization: Lightning path vs bare loop, batch {args.batch_size}, {steps} per epoch, "
          f"precision {args.precision}{', channels-last' if args.channels_last else ''}")
    print(f"data: {data_kind}; machine: {facts['cpu']}, {facts['cpu_count']} cores, "
          f"{facts['torch_threads']} torch threads{', ' + facts['gpu'] if 'gpu' in facts else ''}; "
          f"medians of {results[0]['epochs_measured']} epochs per side ({args.repeats} runs x {args.epochs}), "
          f"the sides alternating epoch by epoch\n")
    print_table(["model", "params", "Lightning s/epoch", "bare s/epoch", "ratio", "paired ratio", "CPU-time ratio", "Lightning train img/s",
                 "bare train img/s", "inference img/s"], rows)
    worst = max(r["ratio"] for r in results)
    print(f"\ntarget: ratio <= {TARGET} for every model: {'met' if worst <= TARGET else 'MISSED'} (worst {worst:.3f})")
    print_json({"benchmark": "colorization", "quick": args.quick, "batch_size": args.batch_size,
                "precision": args.precision, "channels_last": args.channels_last, "data": data_kind,
                "machine": facts, "target_ratio": TARGET, "target_met": worst <= TARGET,
                "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results]})


if __name__ == "__main__":
    main()
