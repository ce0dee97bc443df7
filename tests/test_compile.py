"""Compiled training on the CPU, tiny data: a compiled and an eager 3-epoch run agree, a
compiled run's checkpoint is an eager net's, and where compiling is refused the run trains eagerly after
one warning. torch.compile costs 10-30 s of warm-up per process: one compiled run, shared by the tests."""
import json
import shutil
import warnings

import pytest
import torch

import colorization
from tests import coloreval
from tests.clirun import run_main
from tests.fixtures.cifar import write_cifar_folder
from training.speed import compile_problem

FLAGS = ["UNet", "--num-filters", 8, "--batch-size", 16, "--epochs", 3, "--accelerator", "cpu", "--seed", 4,
         "--no-progress-bar"]
needs_compiler = pytest.mark.skipif(compile_problem(torch.device("cpu")) is not None,
                                    reason=f"torch.compile cannot work here: {compile_problem(torch.device('cpu'))}")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=20, horse_every=2)
    return root


class _CompileCalls:
    """Counts nn.Module.compile calls (Speed compiles the net in place with it)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = torch.nn.Module.compile

        def spy(module, *args, **kwargs):
            self.calls.append(type(module).__name__)
            return real(module, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, "compile", spy)


def _train(root, name, *flags):
    code, _, _ = run_main(colorization.main, [*FLAGS, *flags, "--data-dir", root / "cifar", "--results-dir",
                                              root / "results", "--logs-dir", root / "logs", "--run-name", name])
    assert code == 0
    return json.loads((root / "results" / "colorization" / name / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(cifar_dir, tmp_path_factory):
    """(compiled summary, eager summary, nets compiled, root): the same 3-epoch run, compiled and eager."""
    root = tmp_path_factory.mktemp("compile")
    (root / "cifar").symlink_to(cifar_dir)
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _CompileCalls(monkeypatch)
        compiled = _train(root, "compiled")  # compiling is the CPU default
        compiled_nets = list(calls.calls)
        eager = _train(root, "eager", "--no-compile")
        assert calls.calls == compiled_nets  # --no-compile compiles nothing
    return compiled, eager, compiled_nets, root


@needs_compiler
def test_compiled_and_eager_runs_reach_the_same_validation_losses(runs):
    """Validation losses within 1 %, training losses within 0.1 %. Measured on this data (2-core
    CPU, torch 2.14): training losses agree to 1e-6, validation losses to 5e-4 after 3 epochs. The
    validation losses drift apart faster because each conv's bias, followed by BatchNorm, has a zero
    gradient up to rounding, which AdamW turns into full-size steps: the biases, and the BatchNorm running
    means that follow them, wander differently in any two float orders (at --lr 0.01, 3 % apart)."""
    compiled, eager, nets, _ = runs
    assert nets == ["UNet"]  # the net, not the LightningModule around it
    assert compiled["config"]["compile"] is None and eager["config"]["compile"] is False
    assert compiled["settings"] == eager["settings"]  # a performance flag: the same run as far as reuse goes
    for key, rel in (("val/loss", 0.01), ("train/loss", 0.001)):
        losses = [[h[key] for h in s["history"]] for s in (compiled, eager)]
        assert len(losses[0]) == len(losses[1]) == 3 and losses[1][0] != losses[1][2], key
        for a, b in zip(*losses):
            assert a == pytest.approx(b, rel=rel), key


@needs_compiler
def test_a_compiled_runs_checkpoint_is_an_eager_nets(runs):
    """Plain state-dict keys (no torch.compile wrapper), loaded by an eager module without compiling, which
    predicts what the compiled net predicted: its validation loss and accuracy as the run logged them."""
    from inference.checkpoints import load_module

    compiled, _, _, root = runs
    checkpoints = root / "logs" / "colorization" / "compiled" / "checkpoints"
    state = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    eager_keys = colorization.ColorizationModule(model="UNet", num_filters=8).state_dict().keys()
    assert sorted(state) == sorted(eager_keys) and not any("_orig_mod" in k for k in state)
    module = load_module(colorization.ColorizationModule, checkpoints / "last.ckpt", "colorization")
    assert not hasattr(module.model, "_compiled_call_impl") or module.model._compiled_call_impl is None
    recomputed = coloreval.val_metrics(checkpoints / "last.ckpt")
    assert compiled["final_val_loss"] == pytest.approx(recomputed["loss"], rel=1e-5)
    assert compiled["final_val_acc"] == pytest.approx(recomputed["acc"], abs=1e-6)
    weights = torch.load(root / "results" / "colorization" / "compiled" / "model.pt", weights_only=True)
    assert sorted(weights["state_dict"]) == sorted(eager_keys)


def test_where_compiling_is_refused_one_warning_and_the_run_trains_eagerly(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    problem = compile_problem(torch.device("cpu"))
    assert problem == (f"it needs a C++ compiler and {str(tmp_path / 'no-such-compiler')!r} was not found "
                       f"(install g++, or set CXX)")
    calls = _CompileCalls(monkeypatch)
    (tmp_path / "cifar").symlink_to(cifar_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = _train(tmp_path, "fallback", "--epochs", 1)
    refused = [str(w.message) for w in caught if "not compiling" in str(w.message)]
    assert refused == [f"not compiling the model: {problem}; training runs eagerly (--no-compile hides this)"]
    assert calls.calls == [] and summary["epochs"] == 1


def test_compile_problem_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    assert compile_problem(torch.device("mps")) == "torch.compile is not used on mps devices"
    if shutil.which("g++") is not None:
        assert compile_problem(torch.device("cpu")) is None
    monkeypatch.setenv("CXX", "surely-not-a-compiler-xyz")
    assert "'surely-not-a-compiler-xyz' was not found" in compile_problem(torch.device("cpu"))
