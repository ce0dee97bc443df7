"""Read the user's own image files for prediction.

Every file becomes an RGB image and a greyscale one, however it is stored:

- 8-bit RGB, greyscale (L), palette (P), CMYK, ...: converted to RGB by Pillow.
- With transparency (RGBA, LA, PA, P with a transparent colour): composited over white, as most
  viewers show transparent areas, so that hidden RGB values under alpha 0 never leak into the result.
- 16-bit greyscale (Pillow modes I;16*, I): kept at 16 bits and scaled by 1/65535, not clipped to 8
  bits. (Pillow reads 16-bit RGB PNGs as 8-bit RGB already.)
- The EXIF orientation of camera photos is applied, so outputs look the way the photo is shown.

Greyscale is computed exactly as data/cifar.py makes the training inputs: the mean of R, G and B,
scaled to [0, 1], i.e. (R + G + B) / 765 for 8-bit images, summed in float32 (bit-identical).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import DataError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
TRANSPARENT_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass(frozen=True)
class LoadedImage:
    """One image file, decoded. `values` is (H, W, 3) integer RGB in 0..`max_value` (255 or 65535)."""

    path: Path
    mode: str  # the file's Pillow mode, as read
    values: np.ndarray
    max_value: int

    @property
    def size(self):
        """(width, height), as Pillow gives it."""
        return self.values.shape[1], self.values.shape[0]

    @property
    def name(self):
        return self.path.stem

    def rgb(self):
        """float32 tensor (3, H, W) in [0, 1]."""
        return torch.from_numpy(self.values.astype(np.float32) / self.max_value).permute(2, 0, 1)

    def rgb8(self):
        """uint8 array (H, W, 3): what the segmentation model was trained on (JPEG RGB)."""
        if self.max_value == 255:
            return self.values.astype(np.uint8)
        return np.rint(self.values * (255.0 / self.max_value)).astype(np.uint8)

    def grey(self):
        """float32 tensor (1, H, W) in [0, 1]: the mean of R, G, B, as in data/cifar.py."""
        summed = torch.from_numpy(self.values.astype(np.int32)).sum(dim=-1, dtype=torch.float32)
        return (summed / float(3 * self.max_value)).unsqueeze(0)


def load_image(path) -> LoadedImage:
    """Decode the image file `path`; a missing file, a folder or a non-image is one DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"image {path} not found; check the path")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file; pass image files (e.g. {path}/*.jpg)")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, inside the try
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            values, max_value = _to_rgb_values(im)
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image file Pillow can read (JPEG, PNG, BMP, TIFF, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"image {path} could not be read ({e}): it is truncated, corrupt or too large") from e
    if values.shape[0] < 1 or values.shape[1] < 1:
        raise DataError(f"image {path} is empty ({values.shape[1]}x{values.shape[0]} pixels)")
    return LoadedImage(path, mode, values, max_value)


def _to_rgb_values(im):
    """(H, W, 3) integer array and its maximum value for a Pillow image of any mode."""
    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        return np.repeat(grey[..., None], 3, axis=2), 65535
    if im.mode in TRANSPARENT_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        over_white = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.rint(over_white).astype(np.uint8), 255
    return np.asarray(im.convert("RGB"), dtype=np.uint8), 255


def pad_to_multiple(x, multiple=4):
    """Pad (N, C, H, W) at the bottom and right to multiples of `multiple`, repeating the edge pixels.

    Replicate, not reflect: reflection needs the image to be larger than the padding (it fails on a
    1- or 2-pixel side), and repeating edges adds no new structure the model could colour. Returns the
    padded tensor and the original (H, W) for `crop_to`.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (height, width)


def crop_to(x, size):
    """Undo `pad_to_multiple`: keep the top-left (H, W)."""
    return x[..., : size[0], : size[1]]
