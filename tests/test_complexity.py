"""Closed-form PoolUpsampleNet counts vs forward-hook counts, the report dict and the CLI."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from models.complexity import (batchnorm_params, complexity_report, count_conv_layers, main, padding_table,
                               pool_upsample_closed_form, totals)
from models.convtransposenet import ConvTransposeNet
from models.poolupsamplenet import PoolUpsampleNet
from models.unet import UNet

REPO = Path(__file__).resolve().parents[1]


def test_homework_values_default_net():
    report = complexity_report("PoolUpsampleNet")
    assert report["homework"] == {
        "32x32": {"weights": 49248, "outputs": 81920, "connections": 13271040},
        "64x64": {"weights": 49248, "outputs": 327680, "connections": 53084160}}
    assert report["closed_form"] == {"weights": 49248, "biases": 176, "outputs": 81920,
                                     "connections": 13271040}
    assert report["totals"] == report["closed_form"]
    assert report["batchnorm_params"] == 2 * (32 + 64 + 32 + 24)


def test_per_layer_rows_default_net():
    rows = count_conv_layers(PoolUpsampleNet(), (32, 32), 1)
    assert [r.name for r in rows] == ["block1.conv", "block2.conv", "block3.conv", "block4.conv",
                                      "block5"]
    assert [r.output_shape for r in rows] == [(32, 32, 32), (64, 16, 16), (32, 8, 8),
                                              (24, 16, 16), (24, 32, 32)]
    assert rows[1].weights == 9 * 32 * 64 and rows[1].connections == 64 * 16 * 16 * 9 * 32


def test_closed_form_matches_hooks_for_random_settings():
    rng = random.Random(0)
    for _ in range(25):
        nic, nf, nc = rng.randint(1, 4), rng.randint(1, 12), rng.randint(1, 10)
        k = rng.randint(1, 7)
        h, w = 4 * rng.randint(1, 6), 4 * rng.randint(1, 6)
        model = PoolUpsampleNet(kernel=k, num_in_channels=nic, num_filters=nf, num_colours=nc)
        counted = totals(count_conv_layers(model, (h, w), nic))
        assert counted == pool_upsample_closed_form(nic, nf, nc, k, h, w), (nic, nf, nc, k, h, w)


@pytest.mark.parametrize("cls", [ConvTransposeNet, UNet])
@pytest.mark.parametrize("kernel", [3, 4])
def test_hook_counts_other_nets(cls, kernel):
    nic, nf, nc, h, w = 2, 5, 7, 16, 12
    model = cls(kernel=kernel, num_in_channels=nic, num_filters=nf, num_colours=nc)
    rows = count_conv_layers(model, (h, w), nic)
    assert [r.kind for r in rows] == ["conv", "conv", "conv_transpose", "conv_transpose", "conv"]
    assert [r.output_shape[1:] for r in rows] == [(8, 6), (4, 3), (8, 6), (16, 12), (16, 12)]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert totals(rows)["weights"] == sum(m.weight.numel() for m in convs)
    assert totals(rows)["biases"] == sum(m.bias.numel() for m in convs)
    skip = nf if cls is UNet else 0
    assert rows[3].in_channels == nf + skip
    # transposed conv: connections = outputs * k*k*Cin, like a conv
    assert rows[3].connections == nc * h * w * kernel * kernel * (nf + skip)
    assert batchnorm_params(model) == 2 * (nf + 2 * nf + nf + nc)


def test_count_keeps_training_mode_and_running_stats():
    model = PoolUpsampleNet(num_filters=4)
    before = model.block1.bn.running_mean.clone()
    count_conv_layers(model, (8, 8), 1)
    assert model.training and (model.block1.bn.running_mean == before).all()
    assert not model.block1.conv._forward_hooks  # hooks removed


def test_padding_table_data():
    assert padding_table() == [
        {"kernel": 3, "conv": 1, "transpose": 1, "output_padding": 1, "same": (1, 1)},
        {"kernel": 4, "conv": 1, "transpose": 1, "output_padding": 0, "same": (1, 2)},
        {"kernel": 5, "conv": 2, "transpose": 2, "output_padding": 1, "same": (2, 2)}]
    assert [r["kernel"] for r in padding_table(range(1, 8))] == list(range(1, 8))


def test_main_in_process(capsys):
    assert main(["ConvTransposeNet", "--kernel", "5", "--size", "16", "16"]) == 0
    out = capsys.readouterr().out
    assert "conv_transpose" in out and "Closed form" not in out
    with pytest.raises(SystemExit) as err:
        main(["PoolUpsampleNet", "--size", "30", "32"])
    assert err.value.code == 2
    assert "multiples of 4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main([])
    assert err.value.code == 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "models.complexity", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_six_values_and_formulas():
    result = _cli("PoolUpsampleNet", "--kernel", "3", "--num-in-channels", "1",
                  "--num-filters", "32", "--num-colours", "24", "--size", "32", "32")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "32x32: weights = 49248, outputs = 81920, connections = 13271040" in out
    assert "64x64: weights = 49248, outputs = 327680, connections = 53084160" in out
    assert "weights = k^2 (NIC*NF + 2*NF^2 + 2*NF^2 + NF*NC + NC^2)" in out
    assert "block5" in out and "total" in out


def test_cli_padding_and_errors():
    result = _cli("--padding", "--kernels", "3", "4", "5", "6")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split()[:4] == ["3", "1", "1", "1"]
    assert lines[3].split()[:4] == ["4", "1", "1", "0"]
    assert lines[4].split()[:4] == ["5", "2", "2", "1"]
    assert lines[5].split()[:4] == ["6", "2", "2", "0"]
    bad = _cli("NoSuchNet")
    assert bad.returncode == 2 and "PoolUpsampleNet" in bad.stderr and "UNet" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "--num-filters" in out and "--padding" in out and "--size H W" in out
