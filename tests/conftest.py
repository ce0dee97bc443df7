"""Shared test fixtures: where the real data is, and tiny data sets in the real on-disk formats."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests run offline; make any accidental torch hub download fail fast instead of hanging.
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch-tests"))


@pytest.fixture(scope="session")
def shared_cifar():
    path = SHARED_DATA / "cifar10-horses"
    if not (path / "cifar-10-batches-py" / "test_batch").exists():
        pytest.skip(f"real CIFAR-10 horses not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_oxford17():
    path = SHARED_DATA / "oxford17"
    if not (path / "trimaps").is_dir():
        pytest.skip(f"real Oxford17 data not found at {path}")
    return path
