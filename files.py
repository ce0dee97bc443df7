"""File utilities every layer uses: atomic writes, writability probes and fresh-folder claims.

Atomic writes go to a temporary file beside the target, renamed over it: a crash or a full disk never leaves
half a summary, CSV, PNG or weights file. The file gets the permissions a plain `open(path, "w")` would give.
"""
import json
import os
import secrets
import tempfile
from pathlib import Path

from errors import UserError


def atomic_save(path, save):
    """`save(file object)` into `path` atomically, e.g. `atomic_save(path, lambda f: torch.save(obj, f))`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with mode 0o666, not mkstemp (0600): the kernel applies the umask in force now, as open() does
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            save(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path, data):
    return atomic_save(path, lambda f: f.write(data))


def atomic_write_text(path, text):
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_save_figure(fig, path, dpi=110):
    """A matplotlib figure as PNG (the format is given: the temporary name has no .png)."""
    return atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def is_writable(folder):
    """Whether a file can really be created (for root, `os.access` says yes even on a read-only mount) in
    `folder`, or in its nearest existing parent when it does not exist. Nothing is left behind."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return False
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def check_writable(folder, hint):
    """Create `folder` if needed and prove it writable, or raise a UserError ending in `hint`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create folder {folder} ({e.strerror}); {hint}") from e
    if not is_writable(folder):
        raise UserError(f"folder {folder} is not writable; {hint}")
    return folder


def claim_folder(root, base, also=()):
    """A new folder root/<base>[-N], claimed with an exclusive mkdir (two processes started in the same second
    never share one); a name taken in any of the `also` roots (a run's logs folder) is skipped too."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10000):
        name = base if i == 1 else f"{base}-{i}"
        if any((Path(other) / name).exists() for other in also):
            continue
        try:
            (root / name).mkdir()
        except FileExistsError:
            continue
        return root / name
    raise UserError(f"no free folder name for {base!r} in {root}")
