"""Loaded by every Python process the tests start (tests/conftest.py puts this folder first on
PYTHONPATH): the same download stub and network guard as in the test process (tests/fixtures/network.py)."""
import os

if os.environ.get("IMAGE2IMAGE_OFFLINE_LOG"):
    from tests.fixtures.network import install

    install(os.environ["IMAGE2IMAGE_OFFLINE_LOG"])
