"""Class rebalancing (--rebalance): the weights (color/rebalance.py), the loss (losses/rebalanced.py), and the
checkpoint."""
import json
import math

import pytest
import torch

import colorization
from color.rebalance import (
    class_weights_from_targets,
    palette_distribution,
    rebalance_weights,
    smooth_distribution,
    smoothing_sigma,
)
from data.cifar import CIFARHorses
from losses.cross_entropy import CrossEntropy
from losses.rebalanced import RebalancedCrossEntropy
from reporting.reuse import finished_runs
from tests.clirun import error_lines, run_main, summary
from tests.fixtures.cifar import write_cifar_folder
from tests.tb import read_scalars

P = torch.tensor([0.55, 0.25, 0.12, 0.05, 0.03], dtype=torch.float64)


def weighted_cross_entropy(logits, target, weights):
    """(plain CE, rebalanced CE) of the loss the colourisation module uses, with `weights` set."""
    loss = RebalancedCrossEntropy(len(weights))
    loss.set_weights(weights, torch.full((len(weights),), 1.0 / len(weights)))
    return loss.terms(logits, target)


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.5, 0.9])
def test_weights_have_expectation_one_under_p(lam):
    w = rebalance_weights(P, lam)
    assert float((P * w).sum()) == pytest.approx(1.0, abs=1e-12)


def test_lambda_one_gives_uniform_weights_and_the_plain_cross_entropy():
    assert rebalance_weights(P, 1.0).tolist() == pytest.approx([1.0] * 5, abs=1e-12)
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 3, 3), torch.randint(0, 5, (2, 3, 3))
    plain, weighted = weighted_cross_entropy(logits, target, rebalance_weights(P, 1.0).float())
    assert weighted.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
    assert plain.item() == pytest.approx(weighted.item(), rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.9])
def test_a_rarer_colour_gets_a_larger_weight(lam):
    w = rebalance_weights(P, lam).tolist()  # P is sorted from common to rare
    assert all(a < b for a, b in zip(w, w[1:])), w


def test_weights_worked_by_hand():
    # p = (3/4, 1/4), lambda = 1/2, Q = 2: (1 - lambda) p + lambda / Q = (5/8, 3/8), inverses (8/5, 8/3),
    # E_p = 3/4 * 8/5 + 1/4 * 8/3 = 28/15, so w = (8/5, 8/3) * 15/28 = (6/7, 10/7).
    w = rebalance_weights(torch.tensor([0.75, 0.25]), 0.5)
    assert w.tolist() == pytest.approx([6 / 7, 10 / 7], abs=1e-12)


def test_lambda_outside_0_1_and_infinite_weights_are_refused():
    with pytest.raises(ValueError, match="lambda"):
        rebalance_weights(P, 1.5)
    with pytest.raises(ValueError, match="infinite"):
        rebalance_weights(torch.tensor([1.0, 0.0]), 0.0)


def test_weighted_loss_is_the_target_weighted_mean_of_the_pixel_losses():
    # Equal logits: every pixel's loss is log Q, so the weighted loss is mean(w[target]) * log Q.
    target = torch.tensor([[[0, 0], [1, 2]]])
    w = torch.tensor([0.5, 2.0, 4.0])
    plain, weighted = weighted_cross_entropy(torch.zeros(1, 3, 2, 2), target, w)
    assert plain.item() == pytest.approx(math.log(3), rel=1e-6)
    assert weighted.item() == pytest.approx((0.5 + 0.5 + 2.0 + 4.0) / 4 * math.log(3), rel=1e-6)


def test_palette_distribution_counts_pixels():
    p = palette_distribution(torch.tensor([[0, 0, 2], [2, 2, 2]]), 4)
    assert p.tolist() == pytest.approx([2 / 6, 0.0, 4 / 6, 0.0])


def test_smoothing_keeps_the_mass_and_spreads_it_to_near_colours_only():
    palette = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.2, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # nearest-neighbour distances 0.1, 0.1, 0.1, 1.51...: median 0.1, sigma 0.05
    assert smoothing_sigma(palette) == pytest.approx(0.05)
    smoothed = smooth_distribution(torch.tensor([1.0, 0.0, 0.0, 0.0]), palette)
    assert float(smoothed.sum()) == pytest.approx(1.0, abs=1e-12)
    # from colour 0 the kernel gives exp(-d^2 / (2 * 0.05^2)): 1 to itself, exp(-2) at 0.1, exp(-8) at 0.2,
    # ~0 to white; normalised over these destinations
    g = [1.0, math.exp(-2), math.exp(-8), 0.0]
    assert smoothed.tolist() == pytest.approx([x / sum(g) for x in g], abs=1e-12)
    assert smooth_distribution(torch.tensor([0.2, 0.3, 0.5, 0.0]), palette, sigma=0).tolist() == pytest.approx(
        [0.2, 0.3, 0.5, 0.0])


def test_weights_with_the_gaussian_smoothing_worked_by_hand():
    """Three colours: black, a dark red 0.1 away and white. Nearest-neighbour distances 0.1, 0.1, |white -
    red| = sqrt(2.81): median 0.1, sigma = 0.05, so G = exp(-d^2 / 0.005) is exp(-2) between black and red
    and exp(-562), exp(-600) (about 1e-244) towards white. Targets with shares p = (1/2, 1/4, 1/4):
        p~_0 = (1/2 + e^-2 / 4) / (1 + e^-2),  p~_1 = (e^-2 / 2 + 1/4) / (1 + e^-2),  p~_2 = 1/4.
    lambda = 1/2, Q = 3: w_q = 1 / (p~_q / 2 + 1/6), scaled so that sum p~ w = 1."""
    palette = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [1.0, 1.0, 1.0]])
    targets = torch.tensor([[[0, 0], [1, 2]]])
    a = math.exp(-2)
    smoothed = [(0.5 + a / 4) / (1 + a), (a / 2 + 0.25) / (1 + a), 0.25]
    raw = [1 / (q / 2 + 1 / 6) for q in smoothed]
    scale = sum(q * r for q, r in zip(smoothed, raw))
    expected = [r / scale for r in raw]
    weights, prior = class_weights_from_targets(targets, palette, 0.5)
    assert prior.dtype == torch.float64 and prior.tolist() == pytest.approx(smoothed, abs=1e-12)
    assert weights.dtype == torch.float32 and weights.tolist() == pytest.approx(expected, rel=1e-6)
    # worked on paper: p~ = (0.47020, 0.27980, 0.25), mixed = (0.40177, 0.30657, 0.29167), sum p~ / mixed = 2.94016
    assert [round(w, 4) for w in expected] == [0.8466, 1.1094, 1.1661]
    # without the smoothing they would be those of p = (1/2, 1/4, 1/4): mixed (5/12, 7/24, 7/24), so
    # w = (12/5, 24/7, 24/7) / (6/5 + 12/7) = (14/17, 20/17, 20/17): not these
    unsmoothed = rebalance_weights(torch.tensor([0.5, 0.25, 0.25]), 0.5).tolist()
    assert unsmoothed == pytest.approx([14 / 17, 20 / 17, 20 / 17], abs=1e-12)


def test_rebalanced_loss_keeps_weights_and_prior_as_buffers():
    loss = RebalancedCrossEntropy(3)
    assert loss.class_weights.tolist() == [1.0, 1.0, 1.0] and loss.prior.tolist() == [0.0] * 3
    assert not loss.weights_set
    loss.set_weights(torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.5, 0.3, 0.2]))
    assert loss.weights_set and sorted(loss.state_dict()) == ["class_weights", "prior"]
    assert loss.class_weights.tolist() == [0.5, 1.0, 2.0]
    assert loss.count(torch.zeros(2, 3, 3, dtype=torch.long)) == 18


# ----------------------------------------------------------------------------- in the module and the CLI

FLAGS = ["UNet", "--num-filters", 8, "--batch-size", 16, "--accelerator", "cpu", "--deterministic", "--seed", 1]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=20, horse_every=2)
    return root


def _run(tmp_path, cifar_dir, capsys, *extra):
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--data-dir", cifar_dir]
    code, stdout, err = run_main(colorization.main, [*FLAGS, *out, *extra], capsys)
    assert code == 0, err[-3000:]
    return stdout


def test_rebalanced_run_stores_the_train_split_weights_and_logs_both_losses(tmp_path, cifar_dir, capsys):
    _run(tmp_path, cifar_dir, capsys, "--epochs", 1, "--rebalance", 0.5, "--run-name", "r")
    s = summary(tmp_path / "results", "colorization", "r")
    assert s["hyperparameters"]["rebalance"] == 0.5 and s["loss"] == "rebalanced cross-entropy"
    dm = CIFARHorses(data_dir=cifar_dir, download=False)
    dm.setup()
    want, prior = class_weights_from_targets(dm.train_set.tensors[1], dm.palette, 0.5)
    from_val, _ = class_weights_from_targets(dm.val_set.tensors[1], dm.palette, 0.5)
    assert not torch.allclose(want, from_val)  # the test can tell the splits apart
    ckpt = torch.load(tmp_path / "logs" / "colorization" / "r" / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(ckpt["state_dict"]["criterion.class_weights"], want)
    assert torch.equal(ckpt["state_dict"]["criterion.prior"], prior.float())
    assert s["rebalance"]["class_weights"] == pytest.approx(want.tolist())
    assert s["rebalance"]["smoothed_distribution"] == pytest.approx(prior.tolist(), rel=1e-6)
    assert ckpt["hyper_parameters"]["rebalance"] == 0.5
    scalars = read_scalars(tmp_path / "logs" / "colorization" / "r")
    assert {"val/loss", "val/loss_weighted", "train/loss", "train/loss_weighted"} <= set(scalars)
    assert scalars["val/loss"] != scalars["val/loss_weighted"]
    # a checkpoint loads back with the same weights (as predict and the report load it)
    module = colorization.ColorizationModule.load_from_checkpoint(
        tmp_path / "logs" / "colorization" / "r" / "checkpoints" / "last.ckpt", map_location="cpu")
    assert torch.equal(module.criterion.class_weights, want) and module.hparams.rebalance == 0.5


def test_resume_uses_the_weights_stored_in_the_checkpoint(tmp_path, cifar_dir, capsys):
    _run(tmp_path, cifar_dir, capsys, "--epochs", 1, "--rebalance", 0.5, "--run-name", "r")
    path = tmp_path / "logs" / "colorization" / "r" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    marked = torch.linspace(0.5, 1.5, 24)  # weights the data would never give
    ckpt["state_dict"]["criterion.class_weights"] = marked
    torch.save(ckpt, path)
    _run(tmp_path, cifar_dir, capsys, "--epochs", 2, "--rebalance", 0.5, "--resume", "last")
    s = summary(tmp_path / "results", "colorization", "r")
    assert s["epochs"] == 2 and s["rebalance"]["class_weights"] == pytest.approx(marked.tolist())


def test_rebalance_one_trains_exactly_like_the_plain_cross_entropy(tmp_path, cifar_dir, capsys):
    _run(tmp_path, cifar_dir, capsys, "--epochs", 1, "--run-name", "plain")
    _run(tmp_path, cifar_dir, capsys, "--epochs", 1, "--rebalance", 1, "--run-name", "one")
    plain, one = (summary(tmp_path / "results", "colorization", n) for n in ("plain", "one"))
    assert plain["hyperparameters"]["rebalance"] is None and plain["loss"] == "cross-entropy"
    assert plain["rebalance"] is None and "val/loss_weighted" not in plain["history"][0]
    assert one["final_val_loss"] == pytest.approx(plain["final_val_loss"], rel=1e-6)
    assert one["history"][0]["val/loss_weighted"] == pytest.approx(one["history"][0]["val/loss"], rel=1e-6)


def test_checkpoints_from_before_rebalancing_load_as_the_plain_cross_entropy(tmp_path, cifar_dir, capsys):
    _run(tmp_path, cifar_dir, capsys, "--epochs", 1, "--run-name", "old")
    path = tmp_path / "logs" / "colorization" / "old" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("criterion.")]  # a plain run stores no weights
    del ckpt["hyper_parameters"]["rebalance"]  # as a checkpoint written before --rebalance existed
    torch.save(ckpt, path)
    module = colorization.ColorizationModule.load_from_checkpoint(path, map_location="cpu")
    assert module.hparams.rebalance is None and not module.rebalanced
    assert type(module.criterion) is CrossEntropy


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_rebalance_outside_0_1_is_one_clear_error(value, capsys):
    code, _, err = run_main(colorization.main, ["UNet", "--rebalance", value], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "--rebalance" in err


def test_finished_runs_are_reused_only_with_the_same_loss(tmp_path, cifar_dir):
    """report.py and the sweep reuse finished runs: a rebalanced run never stands in for the homework's."""
    def settings_of(*flags):
        config = colorization.parse_config(["UNet", "--data-dir", str(cifar_dir), *flags])
        return colorization.prepare(config).settings

    def write(name, settings):
        (tmp_path / "colorization" / name).mkdir(parents=True)
        (tmp_path / "colorization" / name / "summary.json").write_text(json.dumps({"settings": settings}))

    plain, half, other = settings_of(), settings_of("--rebalance", "0.5"), settings_of("--rebalance", "0.25")
    assert (plain["config"]["rebalance"], half["config"]["rebalance"]) == (None, 0.5)
    write("plain", plain)
    write("half", half)
    assert [f.name for f, _ in finished_runs(tmp_path, "colorization", plain)] == ["plain"]
    assert [f.name for f, _ in finished_runs(tmp_path, "colorization", half)] == ["half"]
    assert finished_runs(tmp_path, "colorization", other) == []
