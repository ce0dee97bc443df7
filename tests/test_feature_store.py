"""The frozen trunk's features computed once (data/features.py): `trunk_features` in memory or through the
persistent `FeatureStore`, its key (`feature_identity`), faults that are repaired, one builder at a time.

Most tests use tiny uint8 images and a counting feature function (so that "the trunk did not run" is a
count of 0); one uses a small random DeepLabV3 on the Oxford17 fixture, and the CLI tests run segmentation.py.
"""
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import segmentation
from data.features import FeatureStore, array_digest, default_store_dir, feature_identity, identity_key, trunk_features
from data.oxford17 import SPLIT_NAMES, Oxford17, normalise
from errors import UserError
from models.deeplabv3 import FineTunedDeepLabV3, build_deeplabv3
from tests.clirun import error_lines, run_ddp, run_main
from tests.fixtures.oxford17 import write_oxford17
from tests.test_download import _run_together, in_fresh_interpreter

SIZE = 64
MEAN, STD = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)
TRUNK = {"backbone": "test", "weights": "random", "seed": 0, "mean": list(MEAN), "std": list(STD)}
COUNTS = {"train": 6, "val": 3, "test": 3}
SHAPE = (4, 2, 2)  # what Counting returns per image
FAST = ("--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", SIZE, "--batch-size", 4,
        "--accelerator", "cpu", "--epochs", 1)
NORM = functools.partial(normalise, mean=MEAN, std=STD)


def make_images(seed=0, side=8):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=generator)
            for name, n in COUNTS.items()}


IMAGES = make_images()


class Counting:
    """A feature function that counts the images it sees: scale * mean of the normalised image, (N, 4, 2, 2)."""

    def __init__(self, scale=1.0, log=None, delay=0.0):
        self.scale, self.images, self.log, self.delay = scale, 0, log, delay

    def __call__(self, x):
        self.images += len(x)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {len(x)}\n")
            time.sleep(self.delay)
        return self.scale * x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, *SHAPE).clone()


def by_hand(images, scale=1.0):
    """What Counting gives, computed here in float64: ((x / 255 - mean) / std), averaged, times scale."""
    x = images.double() / 255
    mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (MEAN, STD))
    x = (x - mean) / std
    return (scale * x.mean(dim=(1, 2, 3))).view(-1, 1, 1, 1).expand(-1, *SHAPE).float()


def never(x):
    raise AssertionError("the trunk ran although the store holds these features")


def features_of(fn, store, images=IMAGES, precision="32-true", trunk=TRUNK, shape=SHAPE):
    return trunk_features(fn, images, NORM, feature_identity(trunk, images, precision), shape, "cpu", store=store,
                          batch_size=4)


def entry_files(entry):
    return sorted(p.name for p in entry.iterdir())


# ----------------------------------------------------------------------------- in memory

def test_in_memory_computes_all_three_splits_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fn = Counting()
    features, info = features_of(fn, None)
    assert fn.images == 12 and list(features) == ["train", "val", "test"]
    for name in SPLIT_NAMES:
        assert features[name].dtype == torch.float32 and features[name].shape == (COUNTS[name], *SHAPE)
        assert torch.allclose(features[name], by_hand(IMAGES[name]), atol=1e-6)
    assert info == {"location": "memory", "bytes": 12 * 16 * 4, "reused": False, "key": None,
                    "splits": ["train", "val", "test"]}
    assert list(tmp_path.iterdir()) == [] and "feature store" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- the store: reuse

def test_second_call_reads_every_split_from_disk_without_the_trunk(tmp_path, capsys):
    lines = []
    store = FeatureStore(tmp_path / "store", announce=lines.append)
    fn = Counting()
    first, info = features_of(fn, store)
    key = identity_key(feature_identity(TRUNK, IMAGES, "32-true"))
    entry = tmp_path / "store" / key
    assert fn.images == 12 and info["reused"] is False and info["key"] == key and info["location"] == str(entry)
    assert entry_files(entry) == ["meta.json", "test.npy", "train.npy", "val.npy"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [key]  # no lock file, no temporary folder
    assert info["bytes"] == sum(p.stat().st_size for p in entry.iterdir())
    # plain .npy files (128-byte header, then the float32 values): they load without pickle
    for name in SPLIT_NAMES:
        assert (entry / f"{name}.npy").stat().st_size == 128 + COUNTS[name] * 16 * 4
        assert np.array_equal(np.load(entry / f"{name}.npy", allow_pickle=False), first[name].numpy())
    assert capsys.readouterr().out == (f"feature store: built {entry} ({info['bytes'] / 2**20:.1f} MiB, "
                                       f"train/val/test)\n")
    second, again = features_of(never, store)  # as a new run would: nothing recomputed
    assert again == {**info, "reused": True}
    assert capsys.readouterr().out.startswith(f"feature store: reused {entry} (")
    for name in SPLIT_NAMES:
        assert torch.equal(second[name], first[name])
        assert torch.allclose(second[name], by_hand(IMAGES[name]), atol=1e-6)
    # memory-mapped, not loaded: the arrays are views of the .npy files
    arrays = store.open(key, {n: ((COUNTS[n], *SHAPE), "float32") for n in SPLIT_NAMES})
    assert sorted(arrays) == sorted(SPLIT_NAMES) and all(isinstance(a, np.memmap) for a in arrays.values())
    assert lines == []  # nothing was wrong
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["identity"] == json.loads(json.dumps(feature_identity(TRUNK, IMAGES, "32-true")))
    assert meta["arrays"]["val"] == {"shape": [3, 4, 2, 2], "dtype": "float32", "bytes": 128 + 3 * 64}


def test_feature_identity_holds_the_trunk_precision_and_every_splits_images():
    identity = feature_identity(TRUNK, IMAGES, "bf16-mixed")
    assert identity == {"trunk": TRUNK, "precision": "bf16-mixed", "dtype": "float32",
                        "images": {name: array_digest(IMAGES[name]) for name in SPLIT_NAMES},
                        "splits": ["train", "val", "test"]}


def test_array_digest_covers_shape_dtype_and_bytes():
    a = torch.arange(12, dtype=torch.uint8)
    expected = hashlib.sha256(b"(12,)|uint8" + bytes(range(12))).hexdigest()
    assert array_digest(a) == array_digest(a.numpy()) == expected
    assert array_digest(a.view(3, 4)) != expected and array_digest(a.to(torch.int16)) != expected


@pytest.mark.parametrize("change", ["trunk", "precision", "images", "image_size", "split_order"])
def test_anything_that_changes_the_features_changes_the_key(tmp_path, change):
    store = FeatureStore(tmp_path / "store")
    features_of(Counting(), store)
    kwargs = {}
    if change == "trunk":
        kwargs["trunk"] = {**TRUNK, "sha256": "another weights file"}
    elif change == "precision":
        kwargs["precision"] = "bf16-mixed"
    elif change == "images":  # the same sizes, other pixels
        kwargs["images"] = make_images(seed=1)
    elif change == "image_size":
        kwargs["images"] = make_images(side=16)
    else:  # the same images, another assignment to the splits
        kwargs["images"] = {"train": IMAGES["val"], "val": IMAGES["train"], "test": IMAGES["test"]}
    fn = Counting()
    features, info = features_of(fn, store, **kwargs)
    assert fn.images == 12 and info["reused"] is False
    assert len(list((tmp_path / "store").iterdir())) == 2


def test_precision_is_part_of_the_key():
    """Features computed under autocast (16-mixed / bf16-mixed) differ from float32 ones: never served for them."""
    keys = {p: identity_key(feature_identity(TRUNK, IMAGES, p)) for p in ("32-true", "16-mixed", "bf16-mixed")}
    assert len(set(keys.values())) == 3


def test_another_feature_function_under_another_identity_gets_its_own_features(tmp_path):
    """A cache must never answer 'already computed' for another trunk."""
    store = FeatureStore(tmp_path / "store")
    features_of(Counting(1.0), store, trunk={**TRUNK, "weights": "A"})
    fn = Counting(3.0)
    b, info = features_of(fn, store, trunk={**TRUNK, "weights": "B"})
    assert fn.images == 12 and info["reused"] is False
    assert torch.allclose(b["val"], by_hand(IMAGES["val"], 3.0), atol=1e-6)
    again = Counting(3.0)
    c, info = features_of(again, store, trunk={**TRUNK, "weights": "B"})
    assert again.images == 0 and info["reused"] is True and torch.equal(c["val"], b["val"])


def test_an_entry_recording_another_identity_is_never_served(tmp_path):
    """An entry renamed or edited by hand to the key of this identity: its meta.json says whose it is."""
    lines = []
    store = FeatureStore(tmp_path / "store", announce=lines.append)
    _, info_a = features_of(Counting(1.0), store, trunk={**TRUNK, "weights": "A"})
    key_b = identity_key(feature_identity({**TRUNK, "weights": "B"}, IMAGES, "32-true"))
    a = tmp_path / "store" / info_a["key"]
    meta = json.loads((a / "meta.json").read_text())
    meta["key"] = key_b
    (a / "meta.json").write_text(json.dumps(meta))
    a.rename(tmp_path / "store" / key_b)
    fn = Counting(3.0)
    b, info = features_of(fn, store, trunk={**TRUNK, "weights": "B"})
    assert fn.images == 12 and info["reused"] is False  # rebuilt, not A's features
    assert torch.allclose(b["train"], by_hand(IMAGES["train"], 3.0), atol=1e-6)
    assert len(lines) == 1 and "records another identity" in lines[0] and "\n" not in lines[0]


# ----------------------------------------------------------------------------- faults are repaired

def _built(tmp_path):
    lines = []
    store = FeatureStore(tmp_path / "store", announce=lines.append)
    _, info = features_of(Counting(), store)
    return store, lines, tmp_path / "store" / info["key"]


def _rebuilt(store, lines):
    fn = Counting()
    features, info = features_of(fn, store)
    assert fn.images == 12 and info["reused"] is False  # rebuilt...
    assert len(lines) == 1 and "\n" not in lines[0] and "rebuilding" in lines[0], lines  # ...announced in one line
    assert torch.allclose(features["val"], by_hand(IMAGES["val"]), atol=1e-6)
    reread, info = features_of(never, store)  # ...and whole again
    assert info["reused"] is True and torch.equal(reread["val"], features["val"])
    return lines[0]


def test_truncated_array_is_detected_and_rebuilt(tmp_path):
    store, lines, entry = _built(tmp_path)
    data = (entry / "val.npy").read_bytes()
    (entry / "val.npy").write_bytes(data[: len(data) // 2])
    assert f"{entry} has a truncated val.npy ({len(data) // 2} of {len(data)} bytes)" in _rebuilt(store, lines)


def test_array_of_the_wrong_shape_is_detected_and_rebuilt(tmp_path):
    store, lines, entry = _built(tmp_path)
    np.save(entry / "train.npy", np.zeros((6, 4, 2, 3), dtype=np.float32))
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"]["train"]["bytes"] = (entry / "train.npy").stat().st_size  # a consistent but wrong entry
    (entry / "meta.json").write_text(json.dumps(meta))
    assert "train.npy of shape (6, 4, 2, 3) float32, expected (6, 4, 2, 2) float32" in _rebuilt(store, lines)


def test_entry_without_meta_is_detected_and_rebuilt(tmp_path):
    store, lines, entry = _built(tmp_path)
    (entry / "meta.json").unlink()
    assert "is incomplete (no meta.json" in _rebuilt(store, lines)


def test_unreadable_meta_is_detected_and_rebuilt(tmp_path):
    store, lines, entry = _built(tmp_path)
    (entry / "meta.json").write_text("{not json")
    assert "unreadable meta.json" in _rebuilt(store, lines)


def test_half_written_entry_of_a_killed_run_is_removed(tmp_path):
    store, lines, entry = _built(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a process id that no longer runs
    stale = tmp_path / "store" / f".tmp-{entry.name}-{socket.gethostname()}-{proc.pid}-abcdef12"
    (entry / "meta.json").unlink()
    entry.rename(stale)  # what a run killed before its rename leaves behind
    fn = Counting()
    features_of(fn, store)
    assert fn.images == 12 and not stale.exists()
    assert len(lines) == 1 and "half-written" in lines[0] and str(proc.pid) in lines[0]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [entry.name]


def test_a_failing_trunk_leaves_no_entry_and_no_temporary_folder(tmp_path):
    def failing(x):
        raise RuntimeError("out of memory")

    store = FeatureStore(tmp_path / "store")
    with pytest.raises(RuntimeError, match="out of memory"):
        features_of(failing, store)
    assert list((tmp_path / "store").iterdir()) == []


def test_two_writers_of_one_entry_leave_one_whole_entry(tmp_path):
    store = FeatureStore(tmp_path / "store")
    shapes = {"train": (2, 3)}
    a = store.create("k" * 24, {"x": 1}, shapes, "float32")
    b = store.create("k" * 24, {"x": 1}, shapes, "float32")
    a.arrays["train"][:] = 1
    b.arrays["train"][:] = 2
    assert a.commit() is True
    assert b.commit() is False  # the other run won; its copy is discarded, the entry is untouched
    arrays = store.open("k" * 24, {"train": ((2, 3), "float32")})
    assert sorted(arrays) == ["train"] and np.array_equal(arrays["train"], np.ones((2, 3), np.float32))
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["k" * 24]


@in_fresh_interpreter
def test_two_processes_build_one_entry_once(tmp_path):
    """Two processes ask for the same features at once: one runs the trunk, the other waits for the lock
    and reads what the first built (DDP ranks, or two runs on one machine)."""
    log = tmp_path / "calls"

    def worker(i, barrier):
        fn = Counting(log=log, delay=0.3)  # slow enough that the two overlap
        barrier.wait()
        features, info = features_of(fn, FeatureStore(tmp_path / "store"))
        ok = all(torch.allclose(features[n], by_hand(IMAGES[n]), atol=1e-6) for n in SPLIT_NAMES)
        (tmp_path / f"reused-{i}").write_text(str(info["reused"]))
        os._exit(0 if ok else 3)

    assert _run_together(worker) == [0, 0]
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [n for _, n in calls] == ["4", "2", "3", "3"]  # train in batches of 4, then val, then test: once
    assert len({pid for pid, _ in calls}) == 1
    assert sorted((tmp_path / f"reused-{i}").read_text() for i in range(2)) == ["False", "True"]
    key = identity_key(feature_identity(TRUNK, IMAGES, "32-true"))
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [key]  # no lock file, no temporary folder


# ----------------------------------------------------------------------------- bad folders

def test_unwritable_store_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as info:
        features_of(Counting(), FeatureStore(blocker / "store"))
    message = str(info.value)
    assert message.startswith(f"cannot write the feature store in {blocker / 'store'} (") and "\n" not in message
    assert "--feature-store DIR" in message and "--no-feature-cache" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_store_folder_is_one_clear_error(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(UserError, match="cannot write the feature store"):
            features_of(Counting(), FeatureStore(tmp_path / "ro"))
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_key_is_a_digest_of_the_whole_identity():
    assert identity_key({"a": 1, "b": [1, 2]}) == identity_key({"b": [1, 2], "a": 1})
    assert identity_key({"a": 1}) != identity_key({"a": 2})
    assert identity_key({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()[:24]


def test_default_store_is_in_the_users_cache_not_next_to_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_dir() == tmp_path / "home" / ".cache" / "image2image" / "features"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_dir() == tmp_path / "xdg" / "image2image" / "features"


# ----------------------------------------------------------------------------- a real trunk

@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    return write_oxford17(tmp_path_factory.mktemp("oxford17"), n_classes=3, per_class=4)  # 6 / 3 / 3 images


def test_test_split_logits_from_the_store_match_the_full_network(flowers, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # randomly initialised; the fixture's datasplits.mat md5
        model = build_deeplabv3("resnet50", weights="none")  # at 64 px its features are not all zero
        dm = Oxford17(flowers, image_size=SIZE, download=False, mean=model.mean, std=model.std)
        images = {name: dm.images(name) for name in SPLIT_NAMES}
    with torch.no_grad():
        model.last_layer.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))  # a trained-like size
    model.eval()
    norm = functools.partial(normalise, mean=model.mean, std=model.std)
    identity = feature_identity(model.trunk_identity(), images, "32-true")
    store = FeatureStore(tmp_path / "store")
    trunk_features(model.features, images, norm, identity, model.feature_shape(SIZE), "cpu", store=store)
    features, info = trunk_features(never, images, norm, identity, model.feature_shape(SIZE), "cpu", store=store)
    assert info["reused"] is True and features["test"].shape == (3, 256, 8, 8)
    with torch.no_grad():
        full = model.model(norm(images["test"]))["out"]  # torchvision's own forward
        stored = model.head(features["test"], (SIZE, SIZE))
    assert full.abs().max() > 0.1  # logits of a size that makes the comparison mean something
    assert (stored - full).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- through the CLI

def _summaries(results):
    return {json.loads(p.read_text())["loss"]: json.loads(p.read_text())
            for p in (results / "segmentation").glob("*/summary.json")}


def test_cli_second_run_with_the_other_loss_runs_no_trunk_forward(flowers, tmp_path, capsys, monkeypatch):
    dirs = ("--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--data-dir", flowers)
    code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, *dirs, "--feature-store", tmp_path / "fs"],
                              capsys)
    assert code == 0, err[-2000:]
    assert out.count("feature store: built") == 1

    def no_trunk(self, x):
        raise AssertionError("trunk forward in a run that should read the store")

    monkeypatch.setattr(FineTunedDeepLabV3, "features", no_trunk)
    code, out, err = run_main(segmentation.main, ["--loss", "iou", *FAST, *dirs, "--feature-store", tmp_path / "fs"],
                              capsys)
    assert code == 0, err[-2000:]
    assert out.count("feature store: reused") == 1
    summaries = _summaries(tmp_path / "results")
    assert sorted(summaries) == ["ce", "iou"]
    ce, iou = summaries["ce"]["feature_store"], summaries["iou"]["feature_store"]
    assert ce["reused"] is False and iou == {**ce, "reused": True}
    entry = tmp_path / "fs" / ce["key"]
    assert ce["location"] == str(entry) and ce["bytes"] == sum(p.stat().st_size for p in entry.iterdir())
    assert isinstance(summaries["iou"]["test_miou"], float)


def test_cli_no_feature_cache_and_augment_leave_the_store_alone(flowers, tmp_path, capsys):
    for i, flag in enumerate(("--no-feature-cache", "--augment")):
        dirs = ("--results-dir", tmp_path / f"results{i}", "--logs-dir", tmp_path / f"logs{i}", "--data-dir", flowers,
                "--feature-store", tmp_path / "fs")
        code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, *dirs, flag], capsys)
        assert code == 0, err[-2000:]
        assert "feature store" not in out
        summaries = _summaries(tmp_path / f"results{i}")
        assert sorted(summaries) == ["ce"]
        assert summaries["ce"]["inputs"] == "images" and summaries["ce"]["feature_store"] is None
    assert not (tmp_path / "fs").exists()


def test_cli_unwritable_store_is_one_error_line_and_no_run(flowers, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    dirs = ("--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs")
    code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, "--data-dir", flowers, *dirs,
                                                  "--feature-store", tmp_path / "a-file" / "fs"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and "cannot write the feature store" in lines[0] and "--feature-store" in lines[0]
    assert not list((tmp_path / "results").glob("segmentation/*/summary.json"))


DDP = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")


@pytest.mark.slow
def test_ddp_ranks_share_one_store_that_one_process_writes(tmp_path):
    """Two CPU processes (gloo), each preparing its own data: in the first run one builds the entry while the
    other waits for the lock and then reads it; a second run reads it on both ranks."""
    data = write_oxford17(tmp_path / "flowers", n_classes=3, per_class=6)  # 9 train, 3 val, 6 test
    common = ("--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", SIZE, "--batch-size", 2,
              "--epochs", 1, "--data-dir", data, "--feature-store", tmp_path / "fs", *DDP)
    out, err = run_ddp("segmentation.py", "--loss", "ce", *common, "--results-dir", tmp_path / "r1",
                       "--logs-dir", tmp_path / "l1", timeout=600)
    assert out.count("feature store: built") == 1 and out.count("feature store: reused") == 1, out
    entries = list((tmp_path / "fs").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp"), entries  # one entry, no leftovers
    stamp = (entries[0] / "train.npy").stat().st_mtime_ns
    out, err = run_ddp("segmentation.py", "--loss", "iou", *common, "--results-dir", tmp_path / "r2",
                       "--logs-dir", tmp_path / "l2", timeout=600)
    assert out.count("feature store: reused") == 2 and "feature store: built" not in out, out
    assert list((tmp_path / "fs").iterdir()) == entries
    assert (entries[0] / "train.npy").stat().st_mtime_ns == stamp
    summary = json.loads(next((tmp_path / "r2" / "segmentation").glob("*/summary.json")).read_text())
    assert summary["feature_store"]["reused"] is True and isinstance(summary["test_miou"], float)
