"""The colour palette: K RGB colours in [0, 1] that turn colorization into K-way classification.

Each pixel's class is the index of its nearest palette colour. The shipped palette
(`color_kmeans24_cat7.npy`, 24 colours) is the k-means of the CIFAR-10 training horses' pixels;
`python -m data.palette_kmeans` regenerates it.

Logits are turned back into colours (reporting/decodings.py `decode`) in one of two ways:
- `argmax`: the most likely palette colour (the homework's choice);
- `annealed`: the annealed mean of Zhang, Isola and Efros, "Colorful Image Colorization" (ECCV 2016):
  with z = softmax(logits), f_T(z) = exp(log z / T) / sum exp(log z / T) = softmax(logits / T), and
  colour = sum_k f_T(z)_k c_k. T = 1 gives the mean of the predicted distribution (desaturated), T -> 0
  argmax (patchy); the paper's T = 0.38 lies between: smoother and more vivid than argmax.
"""
import warnings
from pathlib import Path

import numpy as np
import torch

from errors import DataError

DEFAULT_PALETTE_PATH = Path(__file__).with_name("color_kmeans24_cat7.npy")
REGENERATE_HINT = "regenerate it with `python -m data.palette_kmeans` (see color/README.md)"
DEFAULT_TEMPERATURE = 0.38  # Zhang et al.'s


def load_palette(path: str | Path | None = None) -> torch.Tensor:
    """A palette file (None: the shipped one, never unpickled) as a float32 (K, 3) tensor in [0, 1], or a DataError.
    A path given may also hold the homework's pickled `[centres, distortion]` object array: loaded with a
    warning; other object arrays are refused from the file's header, without unpickling."""
    path = DEFAULT_PALETTE_PATH if path is None else Path(path)
    explicit = path.resolve() != DEFAULT_PALETTE_PATH.resolve()
    if not path.is_file():
        raise DataError(f"palette file {path} not found; pass an existing .npy file or {REGENERATE_HINT}")
    shape = _object_array_shape(path)
    array = _load_npy(path, allow_pickle=False) if shape is None else _load_legacy(path, explicit, shape)
    return check_palette(array, str(path))


def _object_array_shape(path: Path):
    """The shape of the .npy file's array when it holds pickled objects, else None. Reads only the
    header, so that deciding whether to unpickle never unpickles."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            reader = readers.get(np.lib.format.read_magic(f))
            if reader is None:  # other .npy versions are rare; np.load(allow_pickle=False) then decides safely
                return None
            shape, _, dtype = reader(f)
            return tuple(shape) if dtype.hasobject else None
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"palette file {path} is not a .npy array file ({e}); {REGENERATE_HINT}") from e


def _load_legacy(path: Path, explicit: bool, shape) -> np.ndarray:
    if not explicit:
        raise DataError(f"palette file {path} holds a pickled object array, which the default palette "
                        f"must not; {REGENERATE_HINT}")
    if shape != (2,):  # e.g. a dict saved with np.save (shape ()): refused from the header, never unpickled
        raise DataError(f"palette file {path} holds pickled objects of shape {shape}, not the homework's "
                        f"[centres, distortion] layout (an object array of 2 items); refused without unpickling "
                        f"it; {REGENERATE_HINT}")
    warnings.warn(f"palette file {path} holds pickled objects (as the homework's original [centres, distortion] "
                  f"file does); loading it unpickles the file, so only use files you trust", UserWarning, stacklevel=3)
    return np.asarray(_load_npy(path, allow_pickle=True)[0])  # check_palette then checks the centres


def _load_npy(path: Path, allow_pickle: bool) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except Exception as e:  # truncated or otherwise corrupt: any numpy/pickle error means the same
        raise DataError(f"palette file {path} could not be read ({e}); {REGENERATE_HINT}") from e


def check_palette(array, source: str = "palette") -> torch.Tensor:
    """`array` as a float32 (K, 3) tensor if it is K >= 2 RGB colours in [0, 1], else a DataError naming `source`."""
    array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"palette {source} has dtype {array.dtype}, expected numbers; {REGENERATE_HINT}")
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] < 2:
        raise DataError(f"palette {source} has shape {array.shape}, expected (K, 3) RGB colours with K >= 2; "
                        f"{REGENERATE_HINT}")
    if not np.isfinite(array).all():
        raise DataError(f"palette {source} contains NaN or infinite values; {REGENERATE_HINT}")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        hint = " (they look like 0..255 values: divide by 255)" if low >= 0 and high <= 255 else ""
        raise DataError(f"palette {source} has values in [{low:g}, {high:g}], expected [0, 1]{hint}")
    return torch.from_numpy(array.astype(np.float32))


def nearest_colour(rgb: torch.Tensor, palette: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(N, 3, H, W) RGB -> int64 (N, H, W) index of the nearest (Euclidean) palette colour, ties to the lowest;
    `chunk` images at a time, so memory is about chunk * H * W * K floats whatever N is."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"nearest_colour expects rgb of shape (N, 3, H, W), got {tuple(rgb.shape)}")
    palette = palette.to(device=rgb.device, dtype=rgb.dtype)
    out = torch.empty((rgb.shape[0], *rgb.shape[2:]), dtype=torch.long, device=rgb.device)
    for start in range(0, rgb.shape[0], chunk):
        part = rgb[start:start + chunk]
        # Squared distances accumulated per channel: exact (no |a|^2 - 2ab + |b|^2 cancellation)
        # and only one (n, H, W, K) buffer. argmin returns the first minimum: lowest index wins.
        dist = (part[:, 0, ..., None] - palette[:, 0]) ** 2
        for c in (1, 2):
            dist += (part[:, c, ..., None] - palette[:, c]) ** 2
        out[start:start + chunk] = dist.argmin(dim=-1)
    return out


def palette_to_rgb(indices: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """The image of palette colours of a class map: (..., H, W) int -> float (..., 3, H, W)."""
    return palette.to(indices.device)[indices.long()].movedim(-1, -3)


def annealed_probabilities(logits, temperature=DEFAULT_TEMPERATURE):
    """f_T(softmax(logits)) = softmax(logits / T) over the class dimension 1 of (N, K, H, W) logits."""
    if not temperature > 0:
        raise ValueError(f"temperature must be greater than 0, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=1)
