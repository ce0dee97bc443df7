"""A persistent on-disk store of frozen-trunk features, keyed by everything that determines them.

Layout: `ROOT/<key>/` holds one `<split>.npy` per split (plain NumPy arrays, no pickle: they load
without running code, memory-mapped so a run never needs the whole store in RAM) and `meta.json`
(the identity the key was made from, every array's shape, dtype and byte size). The key is a
sha256 of the identity (JSON): backbone, weights identity, image size, normalisation, precision,
dtype and the content of the images of every split, so features made by another network, of other
images or at another size are never served.

Writing: an entry is built in `ROOT/.tmp-<key>-<host>-<pid>-<random>/` and renamed to `ROOT/<key>/`
when complete (meta.json last), so a reader sees a whole entry or none, and two runs that build the
same entry at once do not corrupt it (the second rename fails; that run reads the first one's).
Faults - a temporary folder left by a killed run, an entry without meta.json, a truncated array,
one of the wrong shape or dtype - are detected, announced in one line, removed and rebuilt. A store
folder that cannot be written gives one UserError line.
"""

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import numpy as np

from errors import UserError

FORMAT = 1
META = "meta.json"
TMP_PREFIX = ".tmp-"


def default_store_dir() -> Path:
    """`$XDG_CACHE_HOME/image2image/features` when XDG_CACHE_HOME is set, else `.cache/features` in the
    working directory: a cache folder of the user's, never next to the data."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "image2image" / "features" if xdg else Path(".cache") / "features"


def file_digest(path, chunk: int = 1 << 22) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def array_digest(array) -> str:
    """sha256 (hex) of an array's shape, dtype and bytes (a torch tensor or NumPy array)."""
    a = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else array)
    digest = hashlib.sha256(f"{a.shape}|{a.dtype}".encode())
    digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def identity_key(identity: dict) -> str:
    """The entry name of an identity: sha256 of its canonical JSON, 24 hex digits."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FeatureStore:
    """Entries of features in `root` (see the module docstring). `announce(line)` reports faults
    and rebuilds (default: print)."""

    def __init__(self, root, announce=None):
        self.root = Path(root).expanduser()
        self.announce = announce or (lambda line: print(line, flush=True))

    def entry(self, key: str) -> Path:
        return self.root / key

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
        if not self.root.is_dir():
            return
        for tmp in self.root.glob(f"{TMP_PREFIX}{key}-*"):
            parts = tmp.name[len(TMP_PREFIX) + len(key) + 1:].rsplit("-", 2)
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or _pid_alive(int(parts[1])):
                continue
            self.announce(f"feature store: {tmp} was left half-written by an interrupted run "
                          f"(process {parts[1]}); removing it")
            shutil.rmtree(tmp, ignore_errors=True)

    def open(self, key: str, expected: dict, repair: bool = True) -> dict | None:
        """{split: read-only-on-disk memory-mapped array} of entry `key`, or None when there is none.

        `expected` = {split: (shape tuple, dtype str)}. An entry that does not match it, or is
        incomplete or truncated, is announced, removed (repair=True) and reported as None."""
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

    def nbytes(self, key: str) -> int:
        """Bytes of entry `key` on disk."""
        return sum(f.stat().st_size for f in self.entry(key).iterdir() if f.is_file())

    # ------------------------------------------------------------------ writing
    def create(self, key: str, identity: dict, shapes: dict, dtype: str) -> "EntryWriter":
        """A writer of entry `key` in a temporary folder; `shapes` = {split: shape}."""
        self.clean_stale(key)
        tmp = self.root / f"{TMP_PREFIX}{key}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as err:
            raise UserError(f"cannot write the feature store in {self.root} ({err.strerror or err}); "
                            f"choose a writable folder with --feature-store DIR, or use --no-feature-cache") from err
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
            raise UserError(f"cannot write the feature store in {store.root} ({err.strerror or err}); "
                            f"free space or choose another folder with --feature-store DIR") from err

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
