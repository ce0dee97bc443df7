"""data/download.py: the writability probe, the cache-folder rule, and one process at a time
downloading / extracting (both data sets), checked with real concurrent processes."""

import functools
import hashlib
import inspect
import multiprocessing
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import data.cifar as cifar
import data.oxford17 as ox
from data.cifar import CIFARHorses
from data.download import cache_folder, exclusive, folder_for_writing, prepare_once
from files import is_writable
from tests.fixtures.cifar import write_cifar_archive
from tests.fixtures.oxford17 import write_oxford17_archives

FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "image2image"


# ----------------------------------------------------------------------------- probe and cache rule

def test_is_writable_really_writes_and_never_creates(tmp_path):
    assert is_writable(tmp_path / "new" / "nested")  # where it would be made: tmp_path is writable
    assert list(tmp_path.iterdir()) == []  # probed in the nearest existing parent, nothing left, nothing made
    # No file can be created in /proc, even by root; os.access says yes to root there.
    assert not is_writable("/proc")
    assert not is_writable("/proc/new/nested")
    if os.geteuid() == 0:
        assert os.access("/proc", os.W_OK)  # why the probe must really write


def test_folder_for_writing_removes_only_the_empty_folders_it_made(tmp_path):
    target = tmp_path / "typo" / "datasets" / "oxford17"
    with pytest.raises(RuntimeError, match="download failed"):
        with folder_for_writing(target) as folder:
            assert folder == target and target.is_dir()
            raise RuntimeError("download failed")
    assert list(tmp_path.iterdir()) == []  # typo/, datasets/ and oxford17/ are gone
    # a folder that already existed stays, and one that is no longer empty stays too
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        with folder_for_writing(tmp_path / "mine" / "a" / "b"):
            (tmp_path / "mine" / "a" / "keep.txt").write_text("x")
            raise RuntimeError("later failure")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["mine", "mine/a", "mine/a/keep.txt"]
    # success keeps what was made
    with folder_for_writing(tmp_path / "ok" / "x"):
        pass
    assert (tmp_path / "ok" / "x").is_dir()


def test_cache_folder_is_per_data_folder_and_never_next_to_the_data(tmp_path, private_cache):
    a, b = tmp_path / "ro" / "a", tmp_path / "ro" / "b"
    assert cache_folder("cifar", a) == cache_folder("cifar", str(a)) != cache_folder("cifar", b)
    assert cache_folder("cifar", a).parent == private_cache / "cifar"
    assert cache_folder("cifar", a).name.startswith("a-")
    assert cache_folder("oxford17", a).parent == private_cache / "oxford17"
    assert tmp_path / "ro" not in cache_folder("cifar", a).parents


def test_lock_file_is_removed_and_the_lock_is_exclusive(tmp_path):
    import fcntl

    with exclusive(tmp_path, "thing"):
        lock = tmp_path / ".thing.lock"
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # held: a second open file cannot lock it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- concurrent processes

def in_fresh_interpreter(test):
    """Run a test that forks in a new Python process (pytest on the test's own file, which may be
    another test module that imports this). Forking this one, in which earlier tests left threads
    (TensorBoard writers, thread pools) that may hold locks, once left both children waiting forever
    (seen in the full suite, never alone)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get("IMAGE2IMAGE_FRESH_TEST") == test.__name__:
            return test(*args, **kwargs)
        node = f"{Path(inspect.getfile(test)).resolve()}::{test.__name__}"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                              capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1],
                              env={**os.environ, "IMAGE2IMAGE_FRESH_TEST": test.__name__})
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return wrapper


def _run_together(target, n=2, timeout=300):
    """Start `n` forked processes running `target(i, barrier)`; their exit codes."""
    barrier = FORK.Barrier(n)
    procs = [FORK.Process(target=_in_child, args=(target, i, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in procs]


def _in_child(target, i, barrier):
    # A forked child must not enter torch's intra-op thread pool that the parent (earlier tests) started:
    # its OpenMP threads do not exist after fork, and the child would wait for them forever.
    torch.set_num_threads(1)
    target(i, barrier)


def _slow_counted(log: Path, fn, what):
    """`fn`, but each call appends a line to `log` and takes 0.5 s (so that racing calls overlap)."""
    def wrapper(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {what}\n")
        time.sleep(0.5)
        return fn(*args, **kwargs)
    return wrapper


@in_fresh_interpreter
def test_prepare_once_makes_once_across_processes(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"

    def make():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        out.write_text("made")
        return out

    def worker(i, barrier):
        barrier.wait()
        found = prepare_once(tmp_path, "x", lambda: out if out.exists() else None, make)
        os._exit(0 if found.read_text() == "made" else 3)

    assert _run_together(worker, n=3) == [0, 0, 0]
    assert len(log.read_text().splitlines()) == 1


@in_fresh_interpreter
def test_two_processes_extract_cifar_once(tmp_path, monkeypatch):
    """Two processes on a folder holding only the archive: one extracts, the other waits and reads."""
    data = tmp_path / "data"
    archive = write_cifar_archive(data)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    log = tmp_path / "extractions"
    monkeypatch.setattr(cifar, "extract", _slow_counted(log, cifar.extract, "extract"))

    def worker(i, barrier):
        barrier.wait()
        dm = CIFARHorses(data, md5=md5, download=False)
        dm.prepare_data()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.setup()
        os._exit(0 if len(dm.train_set) == 50 and len(dm.val_set) == 10 else 3)

    assert _run_together(worker) == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py", cifar.CIFAR_ARCHIVE]  # no lock, temp


@in_fresh_interpreter
def test_two_processes_download_and_extract_oxford17_once(tmp_path, monkeypatch):
    server = write_oxford17_archives(tmp_path / "server", n_classes=2, per_class=4)
    data = tmp_path / "data"
    log = tmp_path / "log"
    monkeypatch.setattr(ox, "fetch", _slow_counted(log, ox.fetch, "fetch"))
    monkeypatch.setattr(ox, "extract", _slow_counted(log, ox.extract, "extract"))

    def worker(i, barrier):
        barrier.wait()
        dm = ox.Oxford17(data, image_size=16, base_url=server.as_uri(),
                         checksums={"17flowers.tgz": None, "datasplits.mat": None})
        dm.prepare_data()
        dm.setup()
        os._exit(0 if sum(map(len, dm.split_numbers.values())) == 8 else 3)

    assert _run_together(worker) == [0, 0]
    calls = sorted(line.split()[1] for line in log.read_text().splitlines())
    assert calls == ["extract", "extract", "fetch", "fetch", "fetch"]  # 2 archives + datasplits.mat, once
    assert sorted(p.name for p in data.iterdir()) == ["17flowers.tgz", "datasplits.mat", "jpg", "trimaps",
                                                      "trimaps.tgz"]


def test_extraction_leftovers_of_a_killed_process_are_removed(tmp_path):
    archive = write_cifar_archive(tmp_path)
    (tmp_path / ".extract-killed" / "cifar-10-batches-py").mkdir(parents=True)  # as a SIGKILL leaves it
    (tmp_path / ".extract-killed" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    folder = cifar.ensure_cifar(tmp_path, download=False, md5=hashlib.md5(archive.read_bytes()).hexdigest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", cifar.CIFAR_ARCHIVE]
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar.OFFICIAL_MD5)
