"""Atomic file writes: a crash or a full disk never leaves half a summary, CSV or figure behind."""
import json
import os
import tempfile
from pathlib import Path


def _atomic(path, write):
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text):
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path, data):
    return _atomic(path, lambda f: f.write(data))


def atomic_write_json(path, obj):
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_figure(fig, path, dpi=110):
    """Save a matplotlib figure as PNG atomically (format given explicitly: the temp name has no .png)."""
    return _atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def atomic_write_bytes(path, data):
    """Write `data` (bytes, e.g. an encoded PNG) to `path` atomically."""
    return _atomic(path, lambda f: f.write(data))
