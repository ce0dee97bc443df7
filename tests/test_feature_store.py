"""The persistent feature store (data/feature_store.py) and Oxford17.cache_features on top of it.

Small random DeepLabV3-MobileNetV3 trunks and 64 px fixture images; the trunk is replaced by a
counting or failing function where a test must prove that no trunk forward ran.
"""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import segmentation
from data.feature_store import FeatureStore, identity_key
from data.oxford17 import FeatureDataset, Oxford17
from errors import UserError
from models.deeplabv3 import FineTunedDeepLabV3, build_deeplabv3
from tests.clirun import error_lines, run_main
from tests.fixtures.oxford17 import write_oxford17

SIZE = 64
TRUNK = {"backbone": "test", "weights": "random", "seed": 0, "precision": "32-true"}
FAST = ("--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", SIZE, "--batch-size", 4,
        "--accelerator", "cpu", "--epochs", 1)


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    return write_oxford17(tmp_path_factory.mktemp("oxford17"), n_classes=3, per_class=4)  # 6 / 3 / 3 images


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_deeplabv3("resnet50", weights=None)  # at 64 px its features are not all zero
    with torch.no_grad():
        net.last_layer.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))  # a trained-like size
    return net.eval()


def datamodule(root, image_size=SIZE, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's datasplits.mat md5 differs from the official one
        dm = Oxford17(root, image_size=image_size, batch_size=4, download=False, **kwargs)
        dm.setup("fit")
    return dm


class Counting:
    """A feature function that counts the images it sees: scale * image mean, as (N, 4, 2, 2)."""

    def __init__(self, scale=1.0):
        self.scale, self.images = scale, 0

    def __call__(self, x):
        self.images += len(x)
        return self.scale * x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 4, 2, 2).clone()


def never(x):
    raise AssertionError("the trunk ran although the store holds these features")


def cache(dm, fn, store, identity=TRUNK, **kwargs):
    """cache_features with the feature shape given (as SegmentationModule does), so that no probe
    forward runs: (4, 2, 2) for Counting, else ResNet-50's (256, 8, 8) at 64 px."""
    kwargs.setdefault("feature_shape", (4, 2, 2) if isinstance(fn, Counting) else (256, 8, 8))
    return dm.cache_features(fn, "cpu", batch_size=4, identity=identity, store=store, **kwargs)


def test_second_run_reads_train_val_and_test_from_disk_without_the_trunk(flowers, tmp_path, model):
    lines = []
    store = FeatureStore(tmp_path / "store", announce=lines.append)
    first = datamodule(flowers)
    assert cache(first, model.features, store)
    assert first.feature_store_info["reused"] is False
    assert all(isinstance(getattr(first, f"{s}_set"), FeatureDataset) for s in ("train", "val", "test"))
    second = datamodule(flowers)
    assert cache(second, never, store)  # a new DataModule, as in a new run: nothing recomputed
    info = second.feature_store_info
    assert info["reused"] is True and info["splits"] == ["train", "val", "test"]
    assert info["bytes"] == first.feature_store_info["bytes"] == second.feature_cache_bytes
    assert info["bytes"] >= 12 * 256 * 8 * 8 * 4  # 12 images of 256x8x8 float32 (output stride 8 at 64 px)
    for split in ("train", "val", "test"):
        a, b = getattr(first, f"{split}_set").tensors[0], getattr(second, f"{split}_set").tensors[0]
        assert a.shape == (len(first.split_numbers[split]), 256, 8, 8) and torch.equal(a, b)
    # memory-mapped, not loaded: the tensors share the pages of the .npy files
    arrays = store.open(info["key"], {s: ((len(second.split_numbers[s]), 256, 8, 8), "float32") for s in
                                      ("train", "val", "test")})
    assert all(isinstance(a, np.memmap) for a in arrays.values())
    assert lines == []  # nothing was wrong
    entry = tmp_path / "store" / info["key"]
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "test.npy", "train.npy", "val.npy"]
    with open(entry / "train.npy", "rb") as f:  # plain .npy: loads with allow_pickle=False
        assert np.load(f, allow_pickle=False).dtype == np.float32


def test_test_split_logits_from_the_store_match_the_full_network(flowers, tmp_path, model):
    dm = datamodule(flowers)
    cache(dm, model.features, FeatureStore(tmp_path / "store"))
    features, masks = map(torch.cat, zip(*dm.test_dataloader()))
    pairs = dm._pairs["test"]
    with torch.no_grad():
        full = model(pairs.normalise(pairs.images))
        stored = model.head(features, (SIZE, SIZE))
    assert full.abs().max() > 0.1  # logits of a size that makes the comparison mean something
    assert (stored - full).abs().max().item() < 1e-3
    assert torch.equal(masks, pairs.masks.long())


@pytest.mark.parametrize("change", ["trunk", "image_size", "mean", "precision", "images", "dtype"])
def test_anything_that_changes_the_features_changes_the_key(flowers, tmp_path, change):
    store = FeatureStore(tmp_path / "store")
    cache(datamodule(flowers), Counting(), store)
    kwargs, identity, dtype, root = {}, dict(TRUNK), torch.float32, flowers
    if change == "trunk":
        identity["sha256"] = "another weights file"
    elif change == "image_size":
        kwargs["image_size"] = SIZE + 8
    elif change == "mean":
        kwargs["mean"] = (0.5, 0.5, 0.5)
    elif change == "precision":
        identity["precision"] = "16-mixed"
    elif change == "dtype":
        dtype = torch.float16
    else:  # the same file names, other pixels
        root = write_oxford17(tmp_path / "other", n_classes=3, per_class=4, seed=1)
    dm = datamodule(root, **kwargs)
    fn = Counting()
    cache(dm, fn, store, identity=identity, dtype=dtype)
    assert fn.images == 12 and dm.feature_store_info["reused"] is False
    assert len([p for p in (tmp_path / "store").iterdir()]) == 2


def test_a_second_call_with_another_feature_function_serves_its_own_features(flowers, tmp_path):
    """Issue 11: the cache used to answer 'already cached' whatever function it was given."""
    for store in (None, FeatureStore(tmp_path / "store")):
        dm = datamodule(flowers)
        cache(dm, Counting(1.0), store, identity={**TRUNK, "weights": "A"})
        a = dm.val_set.tensors[0].clone()
        fn = Counting(3.0)
        cache(dm, fn, store, identity={**TRUNK, "weights": "B"})
        assert fn.images > 0 and torch.allclose(dm.val_set.tensors[0], 3 * a)
        # the same identity again: nothing recomputed; no identity: always recomputed
        again = Counting(3.0)
        cache(dm, again, store, identity={**TRUNK, "weights": "B"})
        assert again.images == 0
        anonymous = Counting(5.0)
        dm.cache_features(anonymous, "cpu", batch_size=4)
        assert anonymous.images == 9 and torch.allclose(dm.val_set.tensors[0], 5 * a)


def _built(flowers, tmp_path):
    lines = []
    store = FeatureStore(tmp_path / "store", announce=lines.append)
    dm = datamodule(flowers)
    cache(dm, Counting(), store)
    return store, lines, tmp_path / "store" / dm.feature_store_info["key"]


def _rebuilt(flowers, store, lines):
    fn = Counting()
    dm = datamodule(flowers)
    cache(dm, fn, store)
    assert fn.images == 12 and dm.feature_store_info["reused"] is False  # rebuilt...
    assert len(lines) == 1 and "\n" not in lines[0] and "rebuilding" in lines[0], lines  # ...announced in one line
    reread = datamodule(flowers)
    cache(reread, never, store, feature_shape=(4, 2, 2))  # ...and whole again
    assert reread.feature_store_info["reused"] is True
    return lines[0]


def test_truncated_array_is_detected_and_rebuilt(flowers, tmp_path):
    store, lines, entry = _built(flowers, tmp_path)
    data = (entry / "val.npy").read_bytes()
    (entry / "val.npy").write_bytes(data[: len(data) // 2])
    assert "truncated val.npy" in _rebuilt(flowers, store, lines)


def test_array_of_the_wrong_shape_is_detected_and_rebuilt(flowers, tmp_path):
    store, lines, entry = _built(flowers, tmp_path)
    np.save(entry / "train.npy", np.zeros((6, 4, 2, 3), dtype=np.float32))
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"]["train"]["bytes"] = (entry / "train.npy").stat().st_size  # a consistent but wrong entry
    (entry / "meta.json").write_text(json.dumps(meta))
    assert "train.npy of shape (6, 4, 2, 3)" in _rebuilt(flowers, store, lines)


def test_entry_without_meta_is_detected_and_rebuilt(flowers, tmp_path):
    store, lines, entry = _built(flowers, tmp_path)
    (entry / "meta.json").unlink()
    assert "incomplete" in _rebuilt(flowers, store, lines)


def test_half_written_entry_of_a_killed_run_is_removed(flowers, tmp_path):
    store, lines, entry = _built(flowers, tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a process id that no longer runs
    import socket

    stale = tmp_path / "store" / f".tmp-{entry.name}-{socket.gethostname()}-{proc.pid}-abcdef12"
    (entry / "meta.json").unlink()
    entry.rename(stale)  # what a run killed before its rename leaves behind
    fn = Counting()
    cache(datamodule(flowers), fn, store)
    assert fn.images == 12 and not stale.exists()
    assert len(lines) == 1 and "half-written" in lines[0] and str(proc.pid) in lines[0]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [entry.name]


def test_two_writers_of_one_entry_leave_one_whole_entry(flowers, tmp_path):
    store = FeatureStore(tmp_path / "store")
    shapes = {"train": (2, 3)}
    a = store.create("k" * 24, {"x": 1}, shapes, "float32")
    b = store.create("k" * 24, {"x": 1}, shapes, "float32")
    a.arrays["train"][:] = 1
    b.arrays["train"][:] = 2
    assert a.commit() is True
    assert b.commit() is False  # the other run won; its copy is discarded, the entry is untouched
    arrays = store.open("k" * 24, {"train": ((2, 3), "float32")})
    assert arrays is not None and float(arrays["train"].sum()) == 6
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["k" * 24]


def test_unwritable_store_folder_is_one_clear_error(flowers, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write the feature store in .*--feature-store DIR"):
        cache(datamodule(flowers), Counting(), FeatureStore(blocker / "store"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_store_folder_is_one_clear_error(flowers, tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(UserError, match="cannot write the feature store"):
            cache(datamodule(flowers), Counting(), FeatureStore(tmp_path / "ro"))
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_key_is_a_digest_of_the_whole_identity():
    assert identity_key({"a": 1, "b": [1, 2]}) == identity_key({"b": [1, 2], "a": 1})
    assert identity_key({"a": 1}) != identity_key({"a": 2})


# ---------------------------------------------------------------- through the CLI
def test_cli_second_run_with_the_other_loss_runs_no_trunk_forward(flowers, tmp_path, capsys, monkeypatch):
    dirs = ("--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--data-dir", flowers)
    code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, *dirs, "--feature-store", tmp_path / "fs"],
                              capsys)
    assert code == 0, err[-2000:]
    assert "feature store: built" in out

    def no_trunk(self, x):
        raise AssertionError("trunk forward in a run that should read the store")

    monkeypatch.setattr(FineTunedDeepLabV3, "features", no_trunk)
    code, out, err = run_main(segmentation.main, ["--loss", "iou", *FAST, *dirs, "--feature-store", tmp_path / "fs"],
                              capsys)
    assert code == 0, err[-2000:]
    assert "feature store: reused" in out
    summaries = {json.loads(p.read_text())["loss"]: json.loads(p.read_text())
                 for p in (tmp_path / "results" / "segmentation").glob("*/summary.json")}
    assert summaries["ce"]["feature_store"]["reused"] is False and summaries["iou"]["feature_store"]["reused"] is True
    assert summaries["iou"]["feature_store"]["bytes"] == summaries["ce"]["feature_store"]["bytes"] > 0
    assert summaries["iou"]["test_miou"] is not None


def test_cli_no_feature_cache_and_augment_leave_the_store_alone(flowers, tmp_path, capsys):
    dirs = ("--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--data-dir", flowers,
            "--feature-store", tmp_path / "fs")
    for flag in ("--no-feature-cache", "--augment"):
        code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, *dirs, flag], capsys)
        assert code == 0, err[-2000:]
        assert "feature store" not in out
    assert not (tmp_path / "fs").exists()
    for summary in (tmp_path / "results" / "segmentation").glob("*/summary.json"):
        record = json.loads(summary.read_text())
        assert record["feature_cache"] is False and record["feature_store"] is None


def test_cli_unwritable_store_is_one_error_line_and_no_run(flowers, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, "--data-dir", flowers,
                                                  "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs",
                                                  "--feature-store", tmp_path / "a-file" / "fs"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and "cannot write the feature store" in lines[0] and "--feature-store" in lines[0]
    assert not list((tmp_path / "results").glob("segmentation/*/summary.json"))


def test_default_store_is_in_the_cache_folder_not_next_to_the_data(tmp_path, monkeypatch):
    from data.feature_store import default_store_dir

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert str(default_store_dir()) == os.path.join(".cache", "features")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_dir() == tmp_path / "xdg" / "image2image" / "features"


@pytest.mark.slow
def test_ddp_ranks_share_one_store_that_one_process_writes(tmp_path):
    """Two CPU processes (gloo): the first run's local rank 0 builds the store while the other waits,
    both train on it; a second run reads it on both ranks."""
    from tests.test_ddp import DDP, run_ddp

    data = write_oxford17(tmp_path / "flowers", n_classes=3, per_class=6)  # 9 train, 3 val, 6 test
    common = ("--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", SIZE, "--batch-size", 2,
              "--epochs", 1, "--data-dir", data, "--feature-store", tmp_path / "fs", *DDP)
    out, err = run_ddp("segmentation.py", "--loss", "ce", *common, "--results-dir", tmp_path / "r1",
                       "--logs-dir", tmp_path / "l1")
    assert out.count("feature store: built") == 1 and "feature store: reused" not in out, out
    entries = list((tmp_path / "fs").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp"), entries  # one entry, no leftovers
    stamp = (entries[0] / "train.npy").stat().st_mtime_ns
    out, err = run_ddp("segmentation.py", "--loss", "iou", *common, "--results-dir", tmp_path / "r2",
                       "--logs-dir", tmp_path / "l2")
    assert out.count("feature store: reused") == 1 and "feature store: built" not in out, out
    assert list((tmp_path / "fs").iterdir()) == entries and (entries[0] / "train.npy").stat().st_mtime_ns == stamp
    summary = json.loads(next((tmp_path / "r2" / "segmentation").glob("*/summary.json")).read_text())
    assert summary["feature_store"]["reused"] is True and summary["test_miou"] is not None
