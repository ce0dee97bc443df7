"""The frozen trunk's features, computed once: in memory for one run, or in a persistent store on disk.

DeepLabV3's trunk is frozen and in eval mode, so its output for an image never changes: `trunk_features`
runs it once over every image (or reads the store) and only the new last layer runs in training, on the
features and masks that `TensorDataModule` serves.

The store: `ROOT/<key>/` holds one `<split>.npy` per split (no pickle; memory-mapped, so a run never holds
the store in RAM) and `meta.json` (the identity, every array's shape, dtype and bytes). The key is a sha256
of the identity (trunk, precision, dtype and every split's image content), so features of another network,
precision, size or image are never served. An entry is built in a temporary folder, by one process at a
time (a file lock in ROOT), and renamed into place when complete, so a reader sees a whole entry or none.
Faults (a killed run's temporary folder, a missing meta.json, a truncated or mis-shaped array) are
announced in one line, removed and rebuilt.
"""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from data.batching import tensor_loader
from data.download import cache_base, exclusive
from errors import UserError
from files import is_writable

FORMAT = 2  # 2: the random trunk is built as the COCO one is (21 classes, aux head); entries of 1 are stale
META = "meta.json"
TMP_PREFIX = ".tmp-"


def default_store_dir() -> Path:
    """`$XDG_CACHE_HOME/image2image/features` (or `~/.cache/...`): a cache of the user's, never next to the data."""
    return cache_base() / "features"


def array_digest(array) -> str:
    """sha256 (hex) of an array's shape, dtype and bytes (a torch tensor or NumPy array)."""
    a = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else array)
    digest = hashlib.sha256(f"{a.shape}|{a.dtype}".encode())
    digest.update(memoryview(a).cast("B") if a.size else b"")  # an empty split has no bytes
    return digest.hexdigest()


def identity_key(identity: dict) -> str:
    """The entry name of an identity: sha256 of its canonical JSON, 24 hex digits."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _unwritable(root, err, hint="choose a writable folder with --feature-store DIR, or use --no-feature-cache"):
    return UserError(f"cannot write the feature store in {root} ({err.strerror or err}); {hint}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FeatureStore:
    """Entries of features in `root`; `announce(line)` reports faults and rebuilds (default: print)."""

    def __init__(self, root, announce=None):
        self.root = Path(root).expanduser()
        self.announce = announce or (lambda line: print(line, flush=True))

    def entry(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def locked(self, key: str):
        """Hold the lock of entry `key` (a file lock in the store folder, made if missing)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not is_writable(self.root):
                raise PermissionError(13, "not writable")
        except OSError as err:
            raise _unwritable(self.root, err) from err
        with exclusive(self.root, key):
            yield

    # ------------------------------------------------------------------ reading
    def _fault(self, path: Path, reason: str, repair: bool) -> None:
        if not repair:
            return
        self.announce(f"feature store: {path} {reason}; removing it and rebuilding the features")
        self._remove(path)

    def _remove(self, path: Path) -> None:
        aside = path.with_name(f"{TMP_PREFIX}broken-{uuid.uuid4().hex[:8]}")
        try:
            path.rename(aside)  # out of the way at once; other readers then see no entry
            shutil.rmtree(aside)
        except FileNotFoundError:
            pass  # another process removed it first
        except OSError as err:
            raise UserError(f"cannot remove the broken feature store entry {path} ({err.strerror or err}); "
                            f"delete it by hand, choose another folder with --feature-store DIR, "
                            f"or use --no-feature-cache") from err

    def clean_stale(self, key: str) -> None:
        """Remove temporary folders of `key` left by builds whose process is gone (same host)."""
        host = socket.gethostname()
        for tmp in self.root.glob(f"{TMP_PREFIX}{key}-*"):
            parts = tmp.name[len(TMP_PREFIX) + len(key) + 1:].rsplit("-", 2)
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or _pid_alive(int(parts[1])):
                continue
            self.announce(f"feature store: {tmp} was left half-written by an interrupted run "
                          f"(process {parts[1]}); removing it")
            shutil.rmtree(tmp, ignore_errors=True)

    def open(self, key: str, expected: dict, repair: bool = True, identity: dict | None = None) -> dict | None:
        """{split: copy-on-write memory-mapped array} of entry `key`, or None; `expected` = {split: (shape, dtype)}.
        `identity`, when given, must be meta.json's (an entry renamed by hand is never served for another). An
        entry that does not match, or is incomplete or truncated, is announced, removed (`repair`) and None."""
        path = self.entry(key)
        if not path.exists():
            return None
        try:
            meta = json.loads((path / META).read_text())
        except FileNotFoundError:
            return self._fault(path, "is incomplete (no meta.json: left half-written?)", repair)
        except (OSError, ValueError) as err:
            return self._fault(path, f"has an unreadable meta.json ({err})", repair)
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return self._fault(path, "was written in another format or under another key", repair)
        # compared as meta.json records the identity (tuples become lists, other values strings)
        if identity is not None and meta.get("identity") != json.loads(json.dumps(identity, default=str)):
            return self._fault(path, "records another identity than its key stands for", repair)
        arrays = {}
        for split, (shape, dtype) in expected.items():
            file = path / f"{split}.npy"
            info = (meta.get("arrays") or {}).get(split)
            if info is None or not file.is_file():
                return self._fault(path, f"has no {split} features", repair)
            if list(info["shape"]) != list(shape) or info["dtype"] != str(dtype):
                return self._fault(path, f"holds {split} features of shape {tuple(info['shape'])} {info['dtype']}, "
                                         f"expected {tuple(shape)} {dtype}", repair)
            size = file.stat().st_size
            if size != info["bytes"]:
                return self._fault(path, f"has a truncated {file.name} ({size} of {info['bytes']} bytes)", repair)
            try:
                array = np.load(file, mmap_mode="c", allow_pickle=False)  # copy-on-write: never writes the file
            except (OSError, ValueError) as err:
                return self._fault(path, f"has an unreadable {file.name} ({err})", repair)
            if array.shape != tuple(shape) or str(array.dtype) != str(dtype):
                return self._fault(path, f"has {file.name} of shape {array.shape} {array.dtype}, "
                                         f"expected {tuple(shape)} {dtype}", repair)
            arrays[split] = array
        return arrays

    # ------------------------------------------------------------------ writing
    def create(self, key: str, identity: dict, shapes: dict, dtype: str) -> "EntryWriter":
        """A writer of entry `key` in a temporary folder; `shapes` = {split: shape}."""
        self.clean_stale(key)
        tmp = self.root / f"{TMP_PREFIX}{key}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)  # and the store folder, if missing
        except OSError as err:
            raise _unwritable(self.root, err) from err
        return EntryWriter(self, key, identity, shapes, dtype, tmp)


class EntryWriter:
    """Memory-mapped `<split>.npy` arrays in a temporary folder; `commit()` renames it into place."""

    def __init__(self, store, key, identity, shapes, dtype, tmp: Path):
        self.store, self.key, self.identity, self.tmp = store, key, identity, tmp
        self.dtype = str(dtype)
        self.arrays = {}
        try:
            for split, shape in shapes.items():
                self.arrays[split] = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=self.dtype,
                                                               shape=tuple(shape))
        except OSError as err:
            self.abort()
            raise _unwritable(store.root, err, "free space or choose another folder with --feature-store DIR") from err

    def commit(self) -> bool:
        """Flush, write meta.json, rename into place. False when another run put the entry there first
        (this copy is then discarded)."""
        arrays = {}
        for split, array in self.arrays.items():
            array.flush()
            arrays[split] = {"shape": list(array.shape), "dtype": self.dtype,
                             "bytes": (self.tmp / f"{split}.npy").stat().st_size}
        self.arrays.clear()  # drop the maps before the rename
        meta = {"format": FORMAT, "key": self.key, "identity": self.identity, "arrays": arrays,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (self.tmp / META).write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(self.tmp, self.store.entry(self.key))
        except OSError:  # the target exists and is not empty: a concurrent run committed first
            self.abort()
            return False
        return True

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------- computing them

def feature_identity(trunk: dict, images: dict, precision: str) -> dict:
    """Everything that determines the features of `images` ({split: uint8 (N, 3, S, S)}): the trunk's
    identity, the precision it runs at, the dtype kept and each split's images in order."""
    return {"trunk": trunk, "precision": str(precision), "dtype": "float32",
            "images": {name: array_digest(x) for name, x in images.items()}, "splits": list(images)}


def _compute(features_fn, images, normalise, device, batch_size, out, autocast, name):
    """features_fn over `images`, batch by batch, written into `out` (a tensor or a NumPy memory map)."""
    for start in tqdm(range(0, len(images), batch_size), desc=f"trunk features: {name}", unit="batch"):
        x = normalise(images[start:start + batch_size].to(device))
        with torch.no_grad(), autocast():
            out[start:start + len(x)] = features_fn(x).float().cpu()
    return out


def trunk_features(features_fn, images: dict, normalise, identity: dict, feature_shape, device, store=None,
                   batch_size=16, autocast=contextlib.nullcontext):
    """({split: float32 features (N, *feature_shape)}, info for the run's summary) of every split's images.
    normalise: uint8 images -> the input of `features_fn`; store: a FeatureStore (read, or built once and
    read), or None to compute them in memory for this run."""
    device = torch.device(device)
    if store is None:
        out = {name: _compute(features_fn, x, normalise, device, batch_size,
                              torch.empty((len(x), *feature_shape)), autocast, name) for name, x in images.items()}
        total = sum(t.nbytes for t in out.values())
        return out, {"location": "memory", "bytes": total, "reused": False, "key": None, "splits": list(images)}
    key = identity_key(identity)
    expected = {name: ((len(x), *feature_shape), "float32") for name, x in images.items()}
    arrays, reused = store.open(key, expected, identity=identity), True
    if arrays is None:
        with store.locked(key):  # one builder; the others wait here, then read what it built
            arrays = store.open(key, expected, identity=identity)
            if arrays is None:
                reused = False
                entry = store.create(key, identity, {n: shape for n, (shape, _) in expected.items()}, "float32")
                try:
                    for name, x in images.items():
                        _compute(features_fn, x, normalise, device, batch_size, entry.arrays[name], autocast, name)
                except BaseException:
                    entry.abort()
                    raise
                entry.commit()
                arrays = store.open(key, expected, repair=False, identity=identity)
    if arrays is None:
        raise UserError(f"the feature store entry {store.entry(key)} is broken right after it was built; "
                        f"delete it, or use --no-feature-cache")
    total = sum(f.stat().st_size for f in store.entry(key).iterdir() if f.is_file())  # the entry's bytes on disk
    print(f"feature store: {'reused' if reused else 'built'} {store.entry(key)} ({total / 2**20:.1f} MiB, "
          f"{'/'.join(images)})", flush=True)
    info = {"location": str(store.entry(key)), "bytes": total, "reused": reused, "key": key, "splits": list(images)}
    return {name: torch.from_numpy(a) for name, a in arrays.items()}, info


class TensorDataModule(pl.LightningDataModule):
    """What a run with the feature cache trains on: `datasets` ({"train", "val", "test": TensorBatches of the
    trunk's features and their masks}); `info`: where the features came from (for the run's summary)."""

    def __init__(self, datasets, batch_size, seed=0, info=None):
        super().__init__()
        self.datasets, self.batch_size, self.seed, self.info = dict(datasets), batch_size, seed, info

    @property
    def val_set(self):
        return self.datasets["val"]

    def train_dataloader(self):
        return tensor_loader(self, self.datasets["train"], True)

    def val_dataloader(self):
        return tensor_loader(self, self.datasets["val"], False)

    def test_dataloader(self):
        return tensor_loader(self, self.datasets["test"], False)
