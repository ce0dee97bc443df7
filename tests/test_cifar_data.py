"""CIFAR-10 horses: reading batches, finding / downloading / verifying data, the DataModule."""

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler
from torchvision.datasets.utils import calculate_md5

import data.cifar as cifar
import data.download as download
from color.palette import load_palette
from data.batching import EpochShuffle
from data.cifar import CIFARHorses, ensure_cifar, load_batches
from errors import DataError
from tests.fixtures.cifar import expected_horses, make_images, write_batch, write_cifar_archive, write_cifar_folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the read-only fallback cache out of ~/.cache and start each test with an empty one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(cifar, "_WARNED_FOLDERS", set())
    return tmp_path / "xdg-cache" / "image2image" / "cifar"


@pytest.fixture
def module(tmp_path):
    write_cifar_folder(tmp_path / "data")
    dm = CIFARHorses(tmp_path / "data", batch_size=7, download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's md5s are not the official ones
        dm.setup()
    return dm


# ----------------------------------------------------------------------------- load_batches

def test_load_batches_reads_channel_major_official_format(tmp_path):
    images = np.zeros((3, 3, 32, 32), np.uint8)
    images[0, 0], images[1, 1], images[2, 2, 5, 7] = 255, 128, 9  # red image, green image, one blue pixel
    write_batch(tmp_path / "b1", images, [7, 3, 7])
    write_batch(tmp_path / "b2", make_images(2, 0), [1, 7])
    loaded, labels = load_batches(tmp_path, ["b1", "b2"])
    assert loaded.dtype == np.uint8 and loaded.shape == (5, 3, 32, 32)
    assert labels.tolist() == [7, 3, 7, 1, 7]
    assert loaded[0, 0].min() == 255 and loaded[0, 1:].max() == 0
    assert loaded[1, 1].min() == 128 and loaded[2, 2, 5, 7] == 9 and loaded[2].sum() == 9
    assert np.array_equal(loaded[3:], make_images(2, 0))


def test_load_batches_accepts_str_keys(tmp_path):
    images = make_images(2, 1)
    with open(tmp_path / "py3", "wb") as f:
        pickle.dump({"data": images.reshape(2, -1), "labels": [7, 0]}, f, protocol=2)
    loaded, labels = load_batches(tmp_path, ["py3"])
    assert np.array_equal(loaded, images) and labels.tolist() == [7, 0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_layout", "missing"])
def test_damaged_batch_raises_data_error_naming_it(tmp_path, damage):
    folder = write_cifar_folder(tmp_path)
    path = folder / "data_batch_3"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"<html>not found</html>")
    elif damage == "wrong_layout":
        with open(path, "wb") as f:  # 1536 values per image instead of 3072
            pickle.dump({b"data": np.zeros((4, 1536), np.uint8), b"labels": [7] * 4}, f, protocol=2)
    else:
        path.unlink()
    with pytest.raises(DataError, match="data_batch_3") as info:
        load_batches(folder, cifar.TRAIN_BATCHES)
    assert str(path) in str(info.value)
    if damage != "missing":
        assert "truncated or not a CIFAR-10 python batch" in str(info.value) and cifar.CIFAR_URL in str(info.value)


class _RunsCode:
    """Unpickling this calls `function(argument)`: what a malicious 'batch' would do."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "inside a batch"])
def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, kind):
    marker = tmp_path / "ran"
    folder = write_cifar_folder(tmp_path)
    path = folder / "data_batch_2"
    if kind == "os.system":
        payload = _RunsCode(os.system, f"touch {marker}")
    elif kind == "builtins.exec":
        payload = _RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    else:  # a batch-shaped dict whose labels hide the call
        payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": _RunsCode(exec, f"open({str(marker)!r}, 'w')")}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError) as info:
        load_batches(folder, cifar.TRAIN_BATCHES)
    message = str(info.value)
    assert not marker.exists()  # the code did not run
    assert "\n" not in message and message.startswith(f"{path} is not a CIFAR-10 python batch: it asks to load ")
    named = {"posix.system", "os.system"} if kind == "os.system" else {"__builtin__.exec", "builtins.exec"}
    assert any(f"load {name}," in message for name in named), message
    assert "refused" in message


def _global(module, name):
    """The pickle opcode GLOBAL for module.name, exactly as named (no Python 2 name mapping)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value):
    return b"V" + str(value).encode("raw_unicode_escape") + b"\n"  # UNICODE


def _allow_list_probes(tmp_path, marker):
    """Pickles that run code through globals an over-broad allow-list would let through, each only
    with plain data around them: {name: (bytes, the global the unpickler must name when refusing)}."""
    evil = tmp_path / "evil.npy"  # an object array whose unpickling creates the marker
    np.save(evil, np.array([_RunsCode(os.system, f"touch {marker}")], dtype=object), allow_pickle=True)
    proto = b"\x80\x02"
    call = b"tR."  # TUPLE (from the MARK), REDUCE, STOP
    return {
        # numpy.load(evil, None, True): a second, unrestricted unpickler on a file of the attacker's
        "numpy.load": (proto + _global("numpy", "load") + b"(" + _text(evil) + b"N\x88" + call, "numpy.load"),
        # numpy.save(marker, [1]): writes a file of the attacker's choosing
        "numpy.save": (proto + _global("numpy", "save") + b"(" + _text(marker) + b"]K\x01a" + call, "numpy.save"),
        # builtins.eval("open(marker, 'w').close()") as Python 3 pickles name it
        "builtins.eval": (proto + _global("builtins", "eval") + b"(" + _text(f"open({str(marker)!r}, 'w').close()")
                          + call, "builtins.eval"),
        # getattr(__import__("os"), "system")("touch marker"): code from builtins alone
        "builtins.getattr": (proto + _global("builtins", "getattr") + b"(" + _global("builtins", "__import__")
                             + b"(" + _text("os") + b"tR" + _text("system") + b"tR(" + _text(f"touch {marker}")
                             + call, "builtins.getattr"),
        # the same through the Python 2 name of the module
        "__builtin__.getattr": (proto + _global("__builtin__", "getattr") + b"(" + _global("__builtin__", "__import__")
                                + b"(" + _text("os") + b"tR" + _text("system") + b"tR(" + _text(f"touch {marker}")
                                + call, "__builtin__.getattr"),
    }


PROBES = ["numpy.load", "numpy.save", "builtins.eval", "builtins.getattr", "__builtin__.getattr"]


def test_allow_list_probes_do_run_code_when_unpickled_freely(tmp_path):
    """The probes below are real attacks: plain pickle runs each one (so refusing them means something)."""
    marker = tmp_path / "ran.npy"
    probes = _allow_list_probes(tmp_path, marker)
    assert sorted(probes) == sorted(PROBES)
    for name, (payload, _) in probes.items():
        marker.unlink(missing_ok=True)
        pickle.loads(payload)
        assert marker.exists(), name


@pytest.mark.parametrize("probe", PROBES)
def test_allow_list_is_exactly_what_a_batch_needs(tmp_path, probe):
    """Refused without running: fails if the allow-list is widened to every numpy.* global or to builtins."""
    marker = tmp_path / "ran.npy"
    payload, named = _allow_list_probes(tmp_path, marker)[probe]
    folder = write_cifar_folder(tmp_path / "data")
    path = folder / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(DataError) as info:
        load_batches(folder, cifar.TRAIN_BATCHES)
    assert not marker.exists()  # nothing ran
    assert str(info.value) == (f"{path} is not a CIFAR-10 python batch: it asks to load {named}, which the official "
                               f"batches never contain; refused without loading it. Use the files of {cifar.CIFAR_URL}")


def test_allow_list_holds_only_the_array_rebuilders():
    assert cifar._BatchUnpickler.ALLOWED == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def test_truncated_batch_fails_setup_too(tmp_path):
    folder = write_cifar_folder(tmp_path)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:1000])
    dm = CIFARHorses(tmp_path, download=False)
    with pytest.raises(DataError, match="test_batch is truncated"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()


# ----------------------------------------------------------------------------- the DataModule

def _nearest_by_hand(rgb, palette):
    """Index of the nearest palette colour per pixel, by brute force in float64 (a second implementation)."""
    out = []
    for part in rgb.split(100):  # 100 images at a time: (100 * 1024, K, 3) float64 differences
        pixels = part.double().permute(0, 2, 3, 1).reshape(-1, 1, 3)
        dist = ((pixels - palette.double().reshape(1, -1, 3)) ** 2).sum(dim=-1)
        out.append(dist.argmin(dim=1).reshape(part.shape[0], *part.shape[2:]))
    return torch.cat(out)


def _fixture_horses(folder, names):
    images, labels = load_batches(folder, names)
    return images[labels == 7]


def test_split_sizes_and_exact_values(module, tmp_path):
    train_n, val_n = expected_horses()
    assert (train_n, val_n) == (50, 10)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    for tensors, names, n in ((module.train_set.tensors, cifar.TRAIN_BATCHES, train_n),
                              (module.val_set.tensors, ["test_batch"], val_n)):
        u8 = _fixture_horses(folder, names)
        assert u8.shape == (n, 3, 32, 32)
        grey, target = tensors[:2]
        assert grey.shape == (n, 1, 32, 32) and grey.dtype == torch.float32
        assert target.shape == (n, 32, 32) and target.dtype == torch.long
        # grey = (R + G + B) / 765, computed here in float64 from the raw bytes
        by_hand = u8.astype(np.float64).sum(axis=1, keepdims=True) / 765.0
        assert np.array_equal(grey.numpy(), by_hand.astype(np.float32))
        assert torch.equal(target, _nearest_by_hand(torch.from_numpy(u8).double() / 255, module.palette))
    assert len(module.val_set.tensors) == 3  # validation items carry the true RGB
    rgb = module.val_set.tensors[2]
    val_u8 = _fixture_horses(folder, ["test_batch"])
    assert rgb.dtype == torch.float32 and torch.equal(rgb, torch.from_numpy(val_u8) / 255.0)
    # stored channels-last (the colour-quality update reads it as (N, H, W, 3)), and a batch gathered from it too
    assert rgb.is_contiguous(memory_format=torch.channels_last)
    assert next(iter(module.val_dataloader()))[2].is_contiguous(memory_format=torch.channels_last)
    assert module.source["train"] == train_n and module.source["val"] == val_n


def test_only_horses_in_file_order(module, tmp_path):
    images, labels = load_batches(tmp_path / "data" / "cifar-10-batches-py", ["test_batch"])
    assert labels.tolist().count(7) == 10
    horses = torch.from_numpy(images[labels == 7]).float() / 255
    assert torch.equal(module.val_set.tensors[2], horses)
    train_images, train_labels = load_batches(tmp_path / "data" / "cifar-10-batches-py", cifar.TRAIN_BATCHES)
    first = torch.from_numpy(train_images[train_labels == 7][:1]).float().mean(dim=1, keepdim=True) / 255
    assert torch.allclose(module.train_set.tensors[0][:1], first, atol=1e-6)


def test_targets_are_nearest_palette_colours(module):
    palette = module.palette.tolist()
    _, target, rgb = module.val_set.tensors
    for n, i, j in [(0, 0, 0), (1, 16, 16), (3, 31, 0), (9, 5, 27), (6, 20, 11)]:
        pixel = rgb[n, :, i, j].tolist()
        dists = [sum((p - c) ** 2 for p, c in zip(pixel, colour)) for colour in palette]
        assert target[n, i, j] == dists.index(min(dists))


def test_setup_is_idempotent_and_palette_known_before_setup(module, tmp_path):
    train_set = module.train_set
    module.setup("fit")
    module.setup("validate")
    assert module.train_set is train_set
    fresh = CIFARHorses(tmp_path / "data", palette=torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]]))
    assert fresh.num_colours == 3 and fresh.train_set is None


def test_palette_argument_forms(tmp_path):
    write_cifar_folder(tmp_path)
    np.save(tmp_path / "bw.npy", np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    from_path = CIFARHorses(tmp_path, palette=tmp_path / "bw.npy", download=False)
    assert from_path.num_colours == 2 and torch.equal(from_path.palette, load_palette(tmp_path / "bw.npy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_path.setup()
    assert from_path.train_set.tensors[1].max() == 1 and from_path.source["palette"] == str(tmp_path / "bw.npy")
    with pytest.raises(DataError, match="shape"):
        CIFARHorses(tmp_path, palette=torch.rand(4, 2))


def test_dataloaders(module):
    train, val = module.train_dataloader(), module.val_dataloader()
    assert isinstance(train.sampler, EpochShuffle) and isinstance(val.sampler, SequentialSampler)
    assert not train.drop_last and train.num_workers == 0 and not train.persistent_workers
    grey, target = next(iter(train))
    assert grey.shape == (7, 1, 32, 32) and target.shape == (7, 32, 32)
    assert [len(g) for g, _ in train] == [7] * 7 + [1]  # last partial batch kept
    first = next(iter(val))
    assert len(first) == 3 and all(torch.equal(a, t[:7]) for a, t in zip(first, module.val_set.tensors))
    workers = CIFARHorses(module.data_dir, num_workers=2)
    workers.train_set = workers.val_set = module.val_set  # skip setup: only the loader settings matter
    loader = workers.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers


def test_sample_batch_is_fixed(module):
    grey, target, rgb = module.sample_batch(4)
    assert grey.shape == (4, 1, 32, 32) and target.shape == (4, 32, 32) and rgb.shape == (4, 3, 32, 32)
    assert all(torch.equal(a, t[:4]) for a, t in zip((grey, target, rgb), module.val_set.tensors))
    assert all(torch.equal(a, b) for a, b in zip(module.sample_batch(4), (grey, target, rgb)))


def test_checksum_tracks_the_data(module, tmp_path):
    assert len(module.data_checksum()) == 16 and module.source["checksum"] == module.data_checksum()
    write_cifar_folder(tmp_path / "same")
    write_cifar_folder(tmp_path / "other", seed=1)
    sums = []
    for name in ("same", "other"):
        dm = CIFARHorses(tmp_path / name, download=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sums.append(dm.data_checksum())
    assert sums[0] == module.data_checksum() != sums[1]


def test_data_dir_may_be_the_batch_folder_itself(tmp_path):
    folder = write_cifar_folder(tmp_path)
    assert ensure_cifar(folder, download=False) == folder.resolve()


# ----------------------------------------------------------------------------- md5 of extracted files

def test_unofficial_extracted_files_warn_once(tmp_path):
    write_cifar_folder(tmp_path)
    with pytest.warns(UserWarning) as record:
        dm = CIFARHorses(tmp_path, download=False)
        dm.setup()
        CIFARHorses(tmp_path, download=False).setup()  # same folder again in this process: silent
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert "7 files differ from the official release (md5); using them anyway" in messages[0]
    assert str(tmp_path.resolve()) in messages[0]
    assert dm.source["official_md5"] is False and len(dm.source["md5_mismatches"]) == 7


def test_official_md5s_give_no_warning(tmp_path, monkeypatch):
    folder = write_cifar_folder(tmp_path)
    official = {name: calculate_md5(str(folder / name)) for name in cifar.OFFICIAL_MD5}
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", official)  # pretend the fixture is the release
    dm = CIFARHorses(tmp_path, download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup()
    assert dm.source["official_md5"] is True


# ----------------------------------------------------------------------------- archives and downloads

def test_download_from_file_url(tmp_path):
    archive = write_cifar_archive(tmp_path / "server")
    data_dir = tmp_path / "data"
    dm = CIFARHorses(data_dir, url=archive.as_uri(), md5=calculate_md5(str(archive)))
    dm.prepare_data()
    assert (data_dir / cifar.CIFAR_ARCHIVE).read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in (data_dir / "cifar-10-batches-py").iterdir()) == sorted(cifar.OFFICIAL_MD5)
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", cifar.CIFAR_ARCHIVE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()
    assert len(dm.train_set) == 50


def test_placed_archive_is_extracted(tmp_path):
    archive = write_cifar_archive(tmp_path)
    folder = ensure_cifar(tmp_path, download=False, md5=calculate_md5(str(archive)))
    assert folder == (tmp_path / "cifar-10-batches-py").resolve()
    assert archive.is_file()  # kept


@pytest.mark.parametrize("placed", [False, True])
def test_wrong_md5_moves_archive_aside(tmp_path, placed):
    archive = write_cifar_archive(tmp_path / "server")
    data_dir = tmp_path / "data"
    if placed:  # the user put an archive there; the official md5 is expected
        data_dir.mkdir()
        os.replace(archive, data_dir / cifar.CIFAR_ARCHIVE)
        kwargs = {"download": False}
    else:
        kwargs = {"url": archive.as_uri(), "md5": "0" * 32}
    with pytest.raises(DataError) as info:
        ensure_cifar(data_dir, **kwargs)
    message, bad = str(info.value), data_dir / (cifar.CIFAR_ARCHIVE + ".bad-md5")
    assert bad.is_file() and not (data_dir / cifar.CIFAR_ARCHIVE).exists()
    assert str(bad) in message and str(data_dir / cifar.CIFAR_ARCHIVE) in message
    assert (cifar.CIFAR_MD5 if placed else "0" * 32) in message


@pytest.mark.parametrize("url", ["file:///nonexistent/cifar-10-python.tar.gz", "http://127.0.0.1:9/x.tar.gz"])
def test_offline_download_names_url_and_data_dir(tmp_path, url):
    data_dir = tmp_path / "typo" / "datasets"  # a mistyped --data-dir: neither folder exists
    with pytest.raises(DataError) as info:
        CIFARHorses(data_dir, url=url).prepare_data()
    message = str(info.value)
    assert message.startswith(f"could not download {url} (") and "\n" not in message
    assert str(data_dir.absolute()) in message and "by hand" in message and "--data-dir" in message
    assert "local copy" in message
    assert not (tmp_path / "typo").exists()  # the folders made for the download are removed again


def test_failed_download_keeps_a_folder_the_user_made(tmp_path):
    data_dir = tmp_path / "datasets"
    data_dir.mkdir()
    with pytest.raises(DataError, match="could not download"):
        ensure_cifar(data_dir, url="file:///nonexistent/cifar-10-python.tar.gz")
    assert data_dir.is_dir() and list(data_dir.iterdir()) == []  # kept, and nothing left in it


def test_no_data_and_download_off(tmp_path):
    data_dir = tmp_path / "typo" / "empty"
    with pytest.raises(DataError, match="downloading is off") as info:
        CIFARHorses(data_dir, download=False).setup()
    assert str(data_dir.absolute()) in str(info.value) and "--data-dir" in str(info.value)
    assert not (tmp_path / "typo").exists()


def test_truncated_archive_names_it(tmp_path):
    archive = write_cifar_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="could not be extracted") as info:
        ensure_cifar(tmp_path, download=False, md5=None)
    assert str(archive) in str(info.value)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing half-extracted
    assert sorted(p.name for p in tmp_path.iterdir()) == [cifar.CIFAR_ARCHIVE]


# ----------------------------------------------------------------------------- read-only data dirs

def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_read_only_folder_is_read_in_place(tmp_path):
    folder = write_cifar_folder(tmp_path / "ro")
    before = _listing(tmp_path / "ro")
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        dm = CIFARHorses(tmp_path / "ro", download=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.setup()
    finally:
        folder.chmod(0o755)
    assert len(dm.val_set) == 10 and dm.source["folder"] == str(folder.resolve())
    assert _listing(tmp_path / "ro") == before


def test_archive_in_read_only_dir_is_extracted_into_cache(tmp_path, monkeypatch, private_cache):
    archive = write_cifar_archive(tmp_path / "ro")
    # chmod does not stop root, so pretend the data dir cannot be written.
    real_writable = download.is_writable
    monkeypatch.setattr(download, "is_writable", lambda d: Path(d) != archive.parent and real_writable(d))
    with pytest.warns(UserWarning, match="not writable; downloading / extracting cifar-10-python.tar.gz in the cache"):
        folder = ensure_cifar(tmp_path / "ro", md5=calculate_md5(str(archive)))
    assert folder.parent.parent == private_cache and folder.name == "cifar-10-batches-py"
    assert folder.parent.name.startswith("ro-")  # the cache folder of this data folder
    assert sorted(p.name for p in archive.parent.iterdir()) == [cifar.CIFAR_ARCHIVE]
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar.OFFICIAL_MD5)
    assert ensure_cifar(tmp_path / "ro", download=False) == folder  # found in the cache next time
    # another read-only folder has a cache of its own: it does not see this one's extraction
    with pytest.raises(DataError, match="downloading is off"):
        ensure_cifar(tmp_path / "other-ro", download=False)


# ----------------------------------------------------------------------------- the real data

@pytest.mark.integration
def test_real_cifar10_horses(shared_cifar):
    folder = shared_cifar / "cifar-10-batches-py"
    differ = [name for name, md5 in cifar.OFFICIAL_MD5.items() if calculate_md5(str(folder / name)) != md5]
    dm = CIFARHorses(shared_cifar, download=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    unofficial = [str(w.message) for w in caught if "differ from the official release" in str(w.message)]
    if differ:  # a re-saved copy (this machine's has 7 such files): used, with one warning naming the count
        assert len(unofficial) == 1 and f"{len(differ)} files differ" in unofficial[0]
    else:  # the official release: no warning
        assert unofficial == []
    assert dm.source["official_md5"] is (not differ) and dm.source["md5_mismatches"] == differ
    assert len(dm.train_set) == 5000 and len(dm.val_set) == 1000
    assert dm.source["folder"] == str(folder.resolve())
    for tensors, names in ((dm.train_set.tensors, cifar.TRAIN_BATCHES), (dm.val_set.tensors, ["test_batch"])):
        u8 = _fixture_horses(folder, names)
        grey, target = tensors[:2]
        by_hand = u8.astype(np.float64).sum(axis=1, keepdims=True) / 765.0
        assert np.array_equal(grey.numpy(), by_hand.astype(np.float32))
        assert torch.equal(target, _nearest_by_hand(torch.from_numpy(u8).double() / 255, dm.palette))
    # the values the committed results/colorization summaries recorded for this data and the shipped palette
    assert dm.settings() == {"checksum": "07baedc9a72014e1", "palette": "2d77b515065a8cbd"}
