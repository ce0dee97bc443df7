"""Run colorization.py / segmentation.py in this process (no interpreter start-up), as the CLI would."""
import hashlib
import json
import os
from pathlib import Path

import torch

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
