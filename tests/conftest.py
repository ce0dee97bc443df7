"""Shared test fixtures: offline by construction, nothing written into the checkout, where the real data is.

- Every download is stubbed and every non-loopback connection refused and reported, in this process
  and in every Python process the tests start (tests/fixtures/network.py); a test that tries to
  connect fails.
- TORCH_HOME and XDG_CACHE_HOME (the data cache, the feature store) point into a temporary folder of
  the session, so no test reads the user's caches or writes into the checkout.
"""
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
_SESSION = Path(tempfile.mkdtemp(prefix="image2image-tests-"))
os.environ["TORCH_HOME"] = str(_SESSION / "torch")
os.environ["XDG_CACHE_HOME"] = str(_SESSION / "xdg-cache")
os.environ["IMAGE2IMAGE_OFFLINE_LOG"] = str(_SESSION / "network.log")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "offline"), str(REPO),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])

from tests.fixtures import network  # noqa: E402  (after the environment above: it imports torch)

network.install(os.environ["IMAGE2IMAGE_OFFLINE_LOG"])

from tests.fixtures.trained import colour_run, flower_run  # noqa: E402,F401  (fixtures of the whole suite)


@pytest.fixture(autouse=True)
def offline_guard():
    """Fail a test (and name the address) when it, or a process it started, tried to leave loopback."""
    before = len(network.log_lines("connect"))
    yield
    tried = network.log_lines("connect")[before:]
    if tried:
        pytest.fail(f"the test opened network connections to {', '.join(tried)}; stub what it downloads")


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
