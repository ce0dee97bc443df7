"""Several processes on one machine start on a data folder that holds only the archive (torchrun
starts both ranks at once, and each calls prepare_data): one extracts, the other waits and reads,
both train, and the results are written once."""
import hashlib
import json
import sys

import pytest

from tests.clirun import ddp_env, run_in_group
from tests.fixtures.cifar import write_cifar_archive

pytestmark = pytest.mark.slow
TIMEOUT = 420


def test_torchrun_two_ranks_extract_cifar_once(tmp_path):
    data = tmp_path / "data"
    archive = write_cifar_archive(data, n_per_batch=22)  # 55 train, 11 val horses
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    env = ddp_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "tests/fixtures/cifar_cli.py", md5, "UNet", "--num-filters", "8", "--epochs", "1", "--no-compile",
               "--batch-size", "4", "--data-dir", str(data), "--results-dir", str(tmp_path / "results"),
               "--logs-dir", str(tmp_path / "logs"), "--run-name", "both", "--accelerator", "cpu",
               "--devices", "2", "--strategy", "ddp"]
    out, err = run_in_group(command, env, TIMEOUT, "torchrun")  # torchrun fails when either rank fails
    log = out + err
    assert log.count(f"extracting {archive} into {data}") == 1, log[-4000:]  # one extraction
    assert "GLOBAL_RANK: 1" in log and "GLOBAL_RANK: 0" in log  # both ranks joined the training
    assert out.count("best val loss") == 1  # only rank 0 reports
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert [p.name for p in (tmp_path / "results" / "colorization").iterdir()] == ["both"]
    results = tmp_path / "results" / "colorization" / "both"
    assert sorted(p.name for p in results.iterdir()) == ["colour_recall.png", "config.json", "confusion.png",
                                                          "curves.png", "machine.json", "model.pt", "samples.png",
                                                          "summary.json"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["data"]["train"] == 55 and summary["data"]["val"] == 11
