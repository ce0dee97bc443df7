"""Find, download, checksum and extract: the one helper both data sets (data/cifar.py, data/oxford17.py) use.

- Files are looked for in `data_dir`, then in its cache folder, and written to `data_dir` when it is
  writable, else to its cache folder (`cache_folder`): never next to the data.
- One process at a time: an exclusive `flock` in the folder written to, around find-or-download-and-extract;
  the others block, then find it done (`prepare_data` once per node, torchrun / SLURM ranks, two runs).
- Nothing half-done is left: downloads go to `<name>.part`, archives are extracted into a temporary
  folder, each renamed when complete; folders made for a download that failed are removed again.
"""
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from pathlib import Path

from torchvision.datasets.utils import download_url, extract_archive

from errors import DataError
from files import is_writable


# ----------------------------------------------------------------------------- folders

def cache_base():
    """$XDG_CACHE_HOME/image2image, or ~/.cache/image2image."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "image2image"


def cache_folder(dataset, data_dir):
    """`cache_base()/<dataset>/<data_dir name>-<12 hex digits of its absolute path>`: two read-only data
    folders never share extracted files."""
    data_dir = Path(data_dir).expanduser().absolute()
    key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return cache_base() / dataset / f"{data_dir.name or 'root'}-{key}"


def write_root(data_dir, cache, what):
    """`data_dir` when writable, else `cache` (with a warning); a DataError when neither is."""
    if is_writable(data_dir):
        return data_dir
    if not is_writable(cache):
        raise DataError(f"neither {data_dir} nor the cache {cache} is writable; extract {what} by hand into "
                        f"{data_dir} or set XDG_CACHE_HOME to a writable folder")
    warnings.warn(f"{data_dir} is not writable; downloading / extracting {what} in the cache folder {cache}",
                  stacklevel=3)
    return cache


# ----------------------------------------------------------------------------- one process at a time

@contextlib.contextmanager
def folder_for_writing(folder):
    """Create `folder` (and missing parents) for the block; if the block fails, remove again the folders
    it created that are still empty (a mistyped `--data-dir` leaves no empty folder behind)."""
    folder = Path(folder)
    made = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        made.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in made:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when empty
        raise


@contextlib.contextmanager
def exclusive(folder, name):
    """Hold an exclusive lock on `folder/.<name>.lock` (blocking until it is free). The lock file
    is removed on release; a waiter that then holds a lock on the removed file notices (its inode is
    no longer the path's) and locks the new one, so two processes never both hold the lock."""
    path = Path(folder) / f".{name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed this file: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the lock


def prepare_once(root, name, find, make):
    """`find()` if it finds something, else `make()` under an exclusive lock in `root` (where `make` writes);
    a process that waited for the lock calls `find()` again first, so the work is done once."""
    found = find()
    if found is not None:
        return found
    with folder_for_writing(root), exclusive(root, name):
        found = find()
        return found if found is not None else make()


# ----------------------------------------------------------------------------- download, check, extract

class DownloadFailed(DataError):
    """A download that did not complete; `reason` says why (nothing is left behind)."""

    def __init__(self, url, reason):
        self.url, self.reason = url, reason
        super().__init__(f"could not download {url} ({reason})")


def fetch(url, path):
    """Download `url` to `path` through `path.part`, or raise DownloadFailed. file:// URLs (local mirrors,
    tests) are copied with urllib: torchvision's progress bar needs a Content-Length, which they lack."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)  # a leftover of ours; download_url would take an existing file as done
    try:
        if urllib.parse.urlparse(url).scheme == "file":
            with urllib.request.urlopen(url) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        else:
            download_url(url, str(part.parent), part.name, md5=None)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise DownloadFailed(url, getattr(e, "reason", None) or e) from e
    os.replace(part, path)
    return path


def move_aside(path):
    """Rename `path` to `<name>.bad-md5` (never deleted); returns what was done, for a message."""
    bad = path.with_name(path.name + ".bad-md5")
    try:
        os.replace(path, bad)
        return f"moved it to {bad}"
    except OSError:
        return f"left it in place (could not move it to {bad})"


def extract(archive, out_dir, member, complete, hint):
    """Extract `archive` and move its folder `member` to `out_dir/member` (returned) once
    `complete(extracted folder)` holds: in one rename, or into an existing folder file by file. A corrupt
    archive or a missing member is a DataError ending with `hint`. Call it holding the lock: temporary
    folders of a process killed while extracting are removed first."""
    archive, out_dir = Path(archive), Path(out_dir)
    target = out_dir / member
    for stale in out_dir.glob(".extract-*"):
        shutil.rmtree(stale, ignore_errors=True)
    print(f"extracting {archive} into {out_dir}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".extract-") as tmp:
        try:
            extract_archive(str(archive), tmp)
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, RuntimeError) as e:
            raise DataError(f"{archive} could not be extracted ({e}): it is truncated or not the expected "
                            f"archive; {hint}") from e
        extracted = Path(tmp) / member
        if not extracted.is_dir() or not complete(extracted):
            raise DataError(f"{archive} does not contain a complete {member}/ folder; {hint}")
        try:
            os.rename(extracted, target)  # fails if target exists (non-empty) on Linux
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
            for item in extracted.iterdir():
                os.replace(item, target / item.name)
    return target
