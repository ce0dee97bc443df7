"""Run colorization.py / segmentation.py in this process (no interpreter start-up), as the CLI would."""
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from training.runs import HANDOFF_ENV


def run_main(main, argv, capsys=None):
    """(exit code, stdout, stderr) of `main(argv)`; argparse's SystemExit becomes its code.

    Clears the run-folder hand-off that a CLI sets for its DDP children (should a run fail before
    clearing it, the next call would reuse its folder), and restores the deterministic-algorithms switch
    that `--deterministic` turns on for the whole process.
    """
    os.environ.pop(HANDOFF_ENV, None)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    finally:
        torch.use_deterministic_algorithms(deterministic)
        os.environ.pop(HANDOFF_ENV, None)
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:") or ": error:" in line]


def summary(results, task, run):
    return json.loads((Path(results) / task / run / "summary.json").read_text())


def snapshot(*folders):
    """{path: sha256} of every file under `folders`: equal snapshots mean nothing was touched."""
    files = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def run_in_group(command, env, timeout, what):
    """(stdout, stderr) of `command` in its own process group, the whole group killed (and the test failed)
    when it runs past `timeout` s: a DDP hang fails the test instead of blocking CI."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's children too
        out, err = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout} s (hang?):\n{err[-3000:]}")
    assert proc.returncode == 0, err[-4000:]
    return out, err


def ddp_env(**extra):
    """The environment of a DDP subprocess: one thread per rank, unbuffered, no run-folder hand-off inherited."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop(HANDOFF_ENV, None)
    return env


def run_ddp(script, *args, timeout=420):
    """(stdout, stderr) of `python script args` (DDP on two CPU processes) in its own process group."""
    return run_in_group([sys.executable, script, *map(str, args)], ddp_env(), timeout, f"{script} with DDP")
