"""--resume, reruns with the same seed, and interruption by SIGINT / SIGTERM, for both CLIs.

The equivalence tests stop a run after epoch 2 by giving it `--epochs 2` (its last.ckpt is the state a
kill after epoch 2 leaves), then `--resume last --epochs 4`; the signal tests really kill a run.
"""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import colorization
import segmentation
from tests.clirun import error_lines, run_main, snapshot, summary
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17
from tests.tb import read_scalars
from training.runs import STAMP, differences

COLOR = ["UNet", "--num-filters", 8, "--batch-size", 16, "--accelerator", "cpu", "--deterministic", "--seed", 3,
         "--no-compile"]
SEG = ["--loss", "ce", "--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", 64,
       "--batch-size", 6, "--lr", 0.05, "--accelerator", "cpu", "--deterministic", "--seed", 3]
VAL = {"colorization": ("val/loss", "val/acc"), "segmentation": ("val/loss", "val/miou", "val/iou_flower")}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=20, horse_every=2)
    return root


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    return write_oxford17(tmp_path_factory.mktemp("oxford17"))


def _val_history(s, task):
    return [[h[k] for k in VAL[task]] for h in s["history"]]


def _resume_equivalence(task, main, flags, capsys, tmp_path):
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs"]
    for name, epochs in (("full", 4), ("part", 2)):
        code, _, err = run_main(main, [*flags, *out, "--epochs", epochs, "--run-name", name], capsys)
        assert code == 0, err[-3000:]
    part = summary(tmp_path / "results", task, "part")
    code, _, err = run_main(main, [*flags, *out, "--epochs", 4, "--resume", "last"], capsys)
    assert code == 0, err[-3000:]
    full, resumed = (summary(tmp_path / "results", task, n) for n in ("full", "part"))
    # Two runs with the same seed: the same numbers, bit for bit on the CPU, epoch by epoch.
    assert _val_history(part, task) == _val_history(full, task)[:2]
    assert len({tuple(v) for v in _val_history(full, task)}) == 4  # the metrics do move between epochs
    # The resumed run continued in its own folder and ends where the uninterrupted one does.
    assert sorted(p.name for p in (tmp_path / "results" / task).iterdir()) == ["full", "part"]
    assert resumed["resumed_from"].endswith(os.path.join("part", "checkpoints", "last.ckpt"))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4] and resumed["epochs"] == 4
    # Training went on from epoch 3 (a fresh 4-epoch run in the same folder would also end at full's
    # numbers): TensorBoard holds each epoch once.
    assert len(read_scalars(tmp_path / "logs" / task / "part")["val/loss"]) == 4
    for got, want in zip(_val_history(resumed, task), _val_history(full, task)):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    # What a rerun needs to know: the seed, the libraries, the data.
    assert full["seed"] == 3 and full["versions"]["torch"] == torch.__version__
    assert len(full["data"]["checksum"]) == 16 and full["data"]["checksum"] == resumed["data"]["checksum"]
    return full, resumed


@pytest.mark.slow
def test_colorization_resume_after_epoch_2_equals_4_epochs_and_reruns_repeat(cifar_dir, tmp_path, capsys):
    _resume_equivalence("colorization", colorization.main, [*COLOR, "--data-dir", cifar_dir], capsys, tmp_path)


@pytest.mark.slow
def test_segmentation_resume_after_epoch_2_equals_4_epochs_and_reruns_repeat(flowers, tmp_path, capsys, monkeypatch):
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):  # every checkpoint read (resume, best for the test split) is weights-only
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    full, resumed = _resume_equivalence("segmentation", segmentation.main, [*SEG, "--data-dir", flowers],
                                        capsys, tmp_path)
    assert resumed["test_miou"] == pytest.approx(full["test_miou"], rel=1e-6, abs=1e-7)
    assert loads and all(w is True for w in loads), loads


# ----------------------------------------------------------------------------- --resume errors

def _fake_checkpoint(path, task, **hparams):
    torch.save({"state_dict": {}, "loops": {}, "epoch": 0, "hyper_parameters": hparams,
                STAMP: {"task": task, "settings": {}}}, path)
    return path


def _one_line_error(code, err, expected_code, *parts):
    assert code == expected_code, err[-2000:]
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err[-2000:]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("task", ["colorization", "segmentation"])
def test_resume_path_that_does_not_exist_is_refused_before_any_data_is_read(tmp_path, capsys, task):
    """The data folder does not exist either: had the data been looked for first, the error would be the
    download's."""
    from tests.fixtures.network import no_network

    main, flags = (colorization.main, COLOR) if task == "colorization" else (segmentation.main, SEG)
    asked = no_network()
    code, _, err = run_main(main, [*flags, "--data-dir", tmp_path / "no-data", "--resume", tmp_path / "nope.ckpt",
                                   "--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    line = _one_line_error(code, err, 2, f"--resume {tmp_path / 'nope.ckpt'}: no such file")
    assert "download" not in line and list(asked) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data folder, no run folders


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04 truncated zip"])
def test_resume_file_that_is_not_a_checkpoint(tmp_path, capsys, cifar_dir, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    code, _, err = run_main(colorization.main, [*COLOR, "--data-dir", cifar_dir, "--resume", bad,
                                                "--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    _one_line_error(code, err, 1, "bad.ckpt", "not a checkpoint written by colorization.py or segmentation.py")


def test_resume_checkpoint_of_the_other_task_names_the_right_program(tmp_path, capsys, cifar_dir):
    ckpt = _fake_checkpoint(tmp_path / "seg.ckpt", "segmentation", loss="ce", backbone="resnet101")
    code, _, err = run_main(colorization.main, [*COLOR, "--data-dir", cifar_dir, "--resume", ckpt,
                                                "--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    _one_line_error(code, err, 1, "a segmentation checkpoint", "segmentation.py --resume")


class Payload:
    """Unpickling it runs code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_checkpoint_that_unpickles_code_is_refused_without_running_it(tmp_path, capsys, cifar_dir):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "loops": {}, "payload": Payload(marker)}, tmp_path / "evil.ckpt")
    code, _, err = run_main(colorization.main, [*COLOR, "--data-dir", cifar_dir, "--resume", tmp_path / "evil.ckpt",
                                                "--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    _one_line_error(code, err, 1, "evil.ckpt", "not a checkpoint written by colorization.py or segmentation.py")
    assert not marker.exists()


def test_resume_last_needs_a_run_with_the_same_settings(tmp_path, capsys, cifar_dir):
    out = ["--data-dir", cifar_dir, "--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"]
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--resume", "last"], capsys)
    _one_line_error(code, err, 1, "--resume last", "no checkpoint")
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--epochs", 1, "--run-name", "k3"], capsys)
    assert code == 0, err[-2000:]
    ckpt = tmp_path / "l" / "colorization" / "k3" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--kernel", 5, "--resume", "last"], capsys)
    _one_line_error(code, err, 1, "other settings")
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--kernel", 5, "--resume", ckpt], capsys)
    _one_line_error(code, err, 1, "kernel: 3 -> 5")
    assert ckpt.read_bytes() == before


def test_debug_shows_the_traceback(tmp_path, cifar_dir):
    from errors import UserError

    with pytest.raises(UserError, match="no such file"):
        run_main(colorization.main, [*COLOR, "--data-dir", cifar_dir, "--debug", "--resume", tmp_path / "x.ckpt"])


# ----------------------------------------------------------------------------- real signals

def _wait_for(path_glob, root, proc, timeout=600):
    start = time.monotonic()
    while not list(root.glob(path_glob)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("no checkpoint within the time limit")
        time.sleep(0.2)


def _signalled_run(script, flags, tmp_path, sig):
    """Start a long run, wait for its first epoch's last.ckpt, send `sig`; return (proc, stderr)."""
    logs = tmp_path / "logs"
    # SIGINT reaches Python as KeyboardInterrupt only if it is not ignored (as in background jobs).
    argv = [script, *flags, "--epochs", 1000, "--results-dir", tmp_path / "results", "--logs-dir", logs]
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for("*/*/checkpoints/last.ckpt", logs, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    return proc, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_the_printed_command_resumes(cifar_dir, tmp_path, sig):
    flags = [str(f) for f in COLOR] + ["--data-dir", str(cifar_dir)]
    proc, err = _signalled_run("colorization.py", flags, tmp_path, sig)
    line = _one_line_error(proc.returncode, err, 128 + sig, f"stopped by {sig.name}", "--resume last")
    run = next((tmp_path / "logs" / "colorization").iterdir())
    interrupted = run / "checkpoints" / "interrupted.ckpt"
    state = torch.load(interrupted, weights_only=True, map_location="cpu")
    assert state["epoch"] >= 1 and state[STAMP]["task"] == "colorization"
    # The message's command resumes the same run from its config.json (here only a few epochs past the checkpoint).
    command = shlex.split(line.split(" with: ", 1)[1])
    config = tmp_path / "results" / "colorization" / run.name / "config.json"
    assert command == ["python", "colorization.py", "--config", str(config), "--resume", "last"]
    epochs = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["epoch"] + 2
    done = subprocess.run([sys.executable, *command[1:], "--epochs", str(epochs)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = summary(tmp_path / "results", "colorization", run.name)
    assert result["epochs"] == epochs and [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))
    assert result["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert not interrupted.exists()  # stale once training went past it
    assert len(list((tmp_path / "results" / "colorization").iterdir())) == 1


@pytest.mark.slow
def test_sigterm_stops_segmentation_with_a_checkpoint(flowers, tmp_path):
    proc, err = _signalled_run("segmentation.py", [*map(str, SEG), "--data-dir", str(flowers)], tmp_path,
                               signal.SIGTERM)
    _one_line_error(proc.returncode, err, 128 + signal.SIGTERM, "stopped by SIGTERM",
                    "python segmentation.py --config ", "--resume last")
    run = next((tmp_path / "logs" / "segmentation").iterdir())
    state = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True, map_location="cpu")
    assert state[STAMP]["task"] == "segmentation"


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from training.callbacks import RNGState

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save({"rng": RNGState().state_dict()}, tmp_path / "rng.ckpt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    RNGState().load_state_dict(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_resume_on_other_data_is_refused_with_one_line_naming_the_checksums(tmp_path, capsys):
    """The data checksum is a setting: a run cannot be continued on images it was not trained on. Both
    refusals (a path, and `last`) name the stored and the given checksum."""
    from data.cifar import CIFARHorses

    write_cifar_folder(tmp_path / "a", seed=0), write_cifar_folder(tmp_path / "b", seed=1)
    checksums = [CIFARHorses(tmp_path / name, download=False).data_checksum() for name in ("a", "b")]
    assert checksums[0] != checksums[1] and all(len(c) == 16 for c in checksums)
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs"]
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--epochs", 1, "--data-dir", tmp_path / "a"], capsys)
    assert code == 0, err[-3000:]
    before = snapshot(tmp_path / "results", tmp_path / "logs")
    last = next((tmp_path / "logs" / "colorization").glob("*/checkpoints/last.ckpt"))
    for spec in (last, "last"):
        code, _, err = run_main(colorization.main, [*COLOR, *out, "--epochs", 2, "--data-dir", tmp_path / "b",
                                                    "--resume", spec], capsys)
        line = _one_line_error(code, err, 1, f"data.checksum: {checksums[0]!r} -> {checksums[1]!r}")
        if spec == "last":  # no run with these settings (the data differs): nothing to resume, and why
            assert "no checkpoint of a colorization run with these settings" in line, line
            assert f"refused: {last.parent.parent.name}: the checkpoint was trained on other data" in line, line
        else:
            assert f"--resume {last}: the checkpoint was trained on other data" in line, line
    assert snapshot(tmp_path / "results", tmp_path / "logs") == before  # nothing written, nothing lost


def test_same_settings_means_equal_up_to_rounding_only():
    """`differences` decides reuse, resume and predict: floats equal to 1e-9 (JSON round trips), no more."""
    lr = {"config": {"lr": 0.001, "rebalance": 0.5, "kernel": 3, "deterministic": False}}

    def changed(**config):
        return differences(lr, {"config": {**lr["config"], **config}})

    assert changed() == [] and changed(lr=0.001 * (1 + 1e-12)) == [] and changed(lr=0.1 * 3 / 300) == []
    assert changed(kernel=3.0) == []  # a JSON integer and a float of the same value
    assert changed(lr=0.00105) == ["config.lr: 0.001 -> 0.00105"]  # 5 %
    assert changed(lr=0.001 * (1 + 1e-6)) == [f"config.lr: 0.001 -> {0.001 * (1 + 1e-6)!r}"]
    assert changed(rebalance=0.55) == ["config.rebalance: 0.5 -> 0.55"]
    assert changed(rebalance=None) == ["config.rebalance: 0.5 -> None"]
    assert changed(deterministic=0) == ["config.deterministic: False -> 0"]  # booleans are not numbers here
    assert differences(lr, {"config": {"lr": 0.001}}, partial=True) == []
    assert differences(lr, {"config": {"lr": 0.001}}) == ["config.deterministic: False -> '(not given)'",
                                                          "config.kernel: 3 -> '(not given)'",
                                                          "config.rebalance: 0.5 -> '(not given)'"]


def test_resume_with_a_learning_rate_5_percent_off_is_refused(cifar_dir, tmp_path, capsys):
    out = ["--data-dir", cifar_dir, "--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"]
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--epochs", 1, "--lr", 0.001], capsys)
    assert code == 0, err[-2000:]
    code, _, err = run_main(colorization.main, [*COLOR, *out, "--epochs", 2, "--lr", 0.00105, "--resume", "last"],
                            capsys)
    _one_line_error(code, err, 1, "config.lr: 0.001 -> 0.00105")
