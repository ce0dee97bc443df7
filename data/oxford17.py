"""Oxford 17 flowers with trimaps, as a binary flower / background segmentation data module.

Sources (VGG Oxford, https://www.robots.ox.ac.uk/~vgg/data/flowers/17/): `17flowers.tgz`
(jpg/image_0001.jpg .. image_1360.jpg, 80 per class in class order), `trimaps.tgz`
(trimaps/image_XXXX.png for 848 of the images; only those images are used) and `datasplits.mat`
(trn1..3 / val1..3 / tst1..3, 1-based image numbers). Existing jpg/ and trimaps/ folders in `data_dir`
(or its cache folder) are used as they are; otherwise the archives are extracted, downloaded first
when `download=True`. Split k comes from datasplits.mat, else it is generated from the data and k alone.
"""
import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import Dataset
from torchvision.datasets.utils import calculate_md5
from torchvision.transforms import functional as TF

from data.batching import tensor_loader
from data.download import (DownloadFailed, cache_folder, exclusive, extract, fetch, folder_for_writing, move_aside,
                           write_root)
from errors import DataError, UsageError

URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
IMAGES_ARCHIVE = "17flowers.tgz"
TRIMAPS_ARCHIVE = "trimaps.tgz"
SPLITS_FILE = "datasplits.mat"
# md5 values as listed by public loader code (not verifiable here); none is known for trimaps.tgz
MD5 = {IMAGES_ARCHIVE: "b59a65d8d1a99cd66944d474e1289eab", TRIMAPS_ARCHIVE: None,
       SPLITS_FILE: "4828cddfd0d803c5abbdebcb1e148a1e"}
IMAGES_PER_CLASS = 80
FLOWER, BACKGROUND, IGNORE_INDEX = 1, 0, 255  # IGNORE_INDEX: left out by the losses and the metric
FLOWER_RGB = (128, 0, 0)
UNLABELLED_RGB = (0, 0, 0)
UNLABELLED_CHOICES = ("ignore", "background")
SPLIT_NAMES = ("train", "val", "test")
_FOLDERS = (("jpg", IMAGES_ARCHIVE, "image_*.jpg"), ("trimaps", TRIMAPS_ARCHIVE, "image_*.png"))
_NUMBER = re.compile(r"image_(\d+)\.(?:jpg|png)$")


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def trimap_to_mask(rgb: np.ndarray, unlabelled: str = "ignore") -> np.ndarray:
    """(..., 3) uint8 trimap colours -> (...) uint8 mask: (128, 0, 0) flower 1, the black unlabelled band
    IGNORE_INDEX (unlabelled="ignore") or background, every other colour background 0."""
    if unlabelled not in UNLABELLED_CHOICES:
        raise UsageError(f"unlabelled must be one of {UNLABELLED_CHOICES}, got {unlabelled!r}")
    code = _rgb_code(np.asarray(rgb, dtype=np.uint8))  # one int per pixel: two comparisons instead of six
    mask = np.full(code.shape, BACKGROUND, dtype=np.uint8)
    mask[code == _rgb_code(np.array(FLOWER_RGB, dtype=np.uint8))] = FLOWER
    if unlabelled == "ignore":
        mask[code == _rgb_code(np.array(UNLABELLED_RGB, dtype=np.uint8))] = IGNORE_INDEX
    return mask


def class_of(number: int) -> int:
    """0-based class of a 1-based image number (80 consecutive images per class)."""
    return (number - 1) // IMAGES_PER_CLASS


def generated_split(numbers, seed: int) -> dict[str, list[int]]:
    """Split stratified by class: per class, shuffled with `seed`, ceil(m/2) to train, half of the rest (rounded
    down) to val, the remainder to test. The DataModule passes seed = its `split`, never the training seed."""
    rng = np.random.default_rng(seed)
    out = {name: [] for name in SPLIT_NAMES}
    by_class: dict[int, list[int]] = {}
    for n in sorted(numbers):
        by_class.setdefault(class_of(n), []).append(n)
    for c in sorted(by_class):
        members = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
        n_train = (len(members) + 1) // 2
        n_val = (len(members) - n_train) // 2
        out["train"] += members[:n_train]
        out["val"] += members[n_train : n_train + n_val]
        out["test"] += members[n_train + n_val :]
    return {name: sorted(v) for name, v in out.items()}


def split_hash(splits: dict[str, list[int]]) -> str:
    """Short sha256 of the train / val / test member lists (sorted image numbers)."""
    lists = {name: sorted(int(n) for n in splits[name]) for name in SPLIT_NAMES}
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()[:16]


def load_datasplits(path: Path, split: int, available) -> dict[str, list[int]]:
    """trn{split} / val{split} / tst{split} from datasplits.mat, restricted to `available` numbers.
    An overlap between the three lists is a DataError (we do not guess which list is right)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises several types (ValueError, MatReadError, OSError)
        raise DataError(f"cannot read {path} ({err}); download it again from {URL}{SPLITS_FILE}") from err
    available = set(available)
    out = {}
    for name, key in zip(SPLIT_NAMES, (f"trn{split}", f"val{split}", f"tst{split}")):
        if key not in mat:
            raise DataError(f"{path} has no list {key!r}; download the official file from {URL}{SPLITS_FILE}")
        out[name] = sorted({int(n) for n in np.asarray(mat[key]).ravel()} & available)
    overlap = (set(out["train"]) & set(out["val"])) | (set(out["train"]) | set(out["val"])) & set(out["test"])
    if overlap:
        raise DataError(f"{path} lists images {sorted(overlap)[:10]} in more than one of "
                        f"trn{split}/val{split}/tst{split}")
    return out


def _number(path: Path) -> int | None:
    match = _NUMBER.search(path.name)
    return int(match.group(1)) if match else None


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def preprocess(rgb8: np.ndarray, size: int) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> uint8 (3, size, size), resized bilinearly (Pillow antialiases when shrinking):
    training images and those given to `--predict` alike."""
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(rgb8)).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous()


def normalise(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> float, scaled to [0, 1] and normalised with the weights' mean and std."""
    return TF.normalize(images_uint8.float() / 255, mean, std)


def _read_rgb(path: Path, what: str, archive: str) -> np.ndarray:
    """The RGB pixels of an image file; an unreadable file is a DataError that says where to get it again."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {what} {path} ({err}); replace it with the file from {URL}{archive}") from err


def _decode_pair(jpg: Path, png: Path, size: int, unlabelled: str) -> tuple[torch.Tensor, np.ndarray]:
    """`preprocess`ed image and mask resized NEAREST, both size x size; an unreadable file is a DataError."""
    image = preprocess(_read_rgb(jpg, "image", IMAGES_ARCHIVE), size)
    mask = trimap_to_mask(_read_rgb(png, "trimap", TRIMAPS_ARCHIVE), unlabelled)
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return image, mask


class Oxford17Pairs(Dataset):
    """(image float (3,S,S) normalised, mask long (S,S) in {0,1,255}) from in-memory uint8
    tensors; `flip=True` flips image and mask together with probability 0.5."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, mean, std, flip: bool = False):
        self.images, self.masks, self.flip, self.mean, self.std = images, masks, flip, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        images, masks = self.__getitems__([i])
        return images[0], masks[0]

    def __getitems__(self, indices):
        """A whole batch at once (see data/batching.py): one gather and one normalisation."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images, masks = normalise(self.images[index], self.mean, self.std), self.masks[index].long()
        if self.flip:
            flip = torch.rand(len(index)) < 0.5
            images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
        return images, masks


class Oxford17(pl.LightningDataModule):
    """Oxford 17 flowers with trimaps: binary flower (1) / background (0) / ignore (255) masks.

    mean / std: the normalisation the network expects (the default leaves images in [0, 1]); `augment`:
    random horizontal flips of train items; `checksums` overrides the md5 table ({"17flowers.tgz": None}
    skips a check). `split` alone decides the split; `seed` only orders the training batches.
    """

    def __init__(self, data_dir="datasets/oxford17", split=1, image_size=224, batch_size=16, num_workers=0,
                 unlabelled="ignore", download=True, seed=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), base_url=URL,
                 augment=False, cache_dir=None, checksums=None):
        super().__init__()
        # prepare_data writes only to data_dir (or its cache) on this machine, and locks while it does:
        # Lightning calls it on local rank 0 of every node; setup() finds the files on any rank.
        self.prepare_data_per_node = True
        if split not in (1, 2, 3):
            raise UsageError(f"split must be 1, 2 or 3, got {split!r}")
        if unlabelled not in UNLABELLED_CHOICES:
            raise UsageError(f"unlabelled must be one of {UNLABELLED_CHOICES}, got {unlabelled!r}")
        if int(image_size) < 1:
            raise UsageError(f"image_size must be a positive number of pixels, got {image_size!r}")
        self.data_dir = Path(data_dir).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_folder("oxford17", data_dir)
        self.split, self.image_size, self.batch_size = split, int(image_size), batch_size
        self.num_workers, self.unlabelled, self.download, self.seed = num_workers, unlabelled, download, seed
        self.mean, self.std, self.augment = tuple(mean), tuple(std), augment
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.md5 = {**MD5, **(checksums or {})}
        self.jpg_dir = self.trimap_dir = self.splits_path = self._root = self.split_source = None
        self.train_set = self.val_set = self.test_set = None
        self.source, self.split_numbers, self._pairs = {}, {}, {}

    # ---------------------------------------------------------------- files
    def _url(self, name: str) -> str:
        return self.base_url + name

    def _check_md5(self, path: Path, name: str, downloaded: bool) -> str:
        """The md5 check, for the notes. A downloaded file with the wrong md5 is moved aside to
        <name>.bad-md5 and is a DataError; a file the user put there is used as given (with a warning)."""
        expected = self.md5.get(name)
        got = None if expected is None else calculate_md5(str(path))
        if got == expected:
            return "no md5 known" if expected is None else f"checked ({expected})"
        if downloaded:
            raise DataError(f"{path} downloaded from {self._url(name)} has md5 {got}, expected {expected}; "
                            f"{move_aside(path)}: download it again and put it in {path.parent}")
        warnings.warn(f"Oxford17: {path} has md5 {got}, not the official {expected}; using it as given", stacklevel=4)
        return f"differs from the official {expected} (got {got}); used as given"

    def _find(self, name: str, pattern: str | None = None) -> Path | None:
        """data_dir/`name`, else the cache's: a file, or with `pattern` a folder holding files that match it."""
        paths = (root / name for root in (self.data_dir, self.cache_dir))
        return next((path for path in paths if (_count(path, pattern) if pattern else path.is_file())), None)

    def _find_or_download(self, name: str, notes: dict) -> Path | None:
        """Path of file `name` in data_dir (or the cache), downloading it if allowed; None if it is
        missing and cannot be downloaded (the reason goes into notes["missing"])."""
        path = self._find(name)
        if path is not None:
            notes.update(origin=f"found {path}", md5=self._check_md5(path, name, downloaded=False))
            return path
        if not self.download:
            notes["missing"] = "not found and download=False"
            return None
        url, path = self._url(name), self._write_root() / name
        try:
            fetch(url, path)  # md5 is checked below, to move a bad file aside
        except DownloadFailed as err:
            notes["missing"] = f"download failed: {err.reason}"
            return None
        notes.update(origin=f"downloaded {url} to {path}", md5=self._check_md5(path, name, downloaded=True))
        return path

    def _obtain_folder(self, folder: str, archive: str, pattern: str) -> tuple[Path | None, dict]:
        """An existing `folder` with files matching `pattern`, else the extracted `archive`."""
        notes: dict = {"url": self._url(archive)}
        found = self._find(folder, pattern)
        if found is not None:
            notes.update(origin=f"folder {found}", md5="not checked (extracted folder used)",
                         files=_count(found, pattern))
            return found, notes
        path = self._find_or_download(archive, notes)
        if path is None:
            return None, notes
        hint = f"replace it with the file from {self._url(archive)}"
        dest = extract(path, self._write_root(), folder, lambda tmp: _count(tmp, pattern) > 0, hint)
        n = _count(dest, pattern)
        notes.update(extracted=f"ok: {n} files in {dest}", files=n)
        return dest, notes

    def _write_root(self) -> Path:
        """data_dir, or the cache when data_dir is read-only (probed once per prepare_data)."""
        if self._root is None:
            self._root = write_root(self.data_dir, self.cache_dir, "the Oxford17 files")
        return self._root

    def _needs_writing(self) -> bool:
        """Whether prepare_data would download or extract anything (else it only finds files)."""
        to_extract = any(self._find(folder, pattern) is None and (self.download or self._find(archive) is not None)
                         for folder, archive, pattern in _FOLDERS)
        return to_extract or (self.download and self._find(SPLITS_FILE) is None)

    def prepare_data(self) -> None:
        """Find (or extract, or download) jpg/, trimaps/ and datasplits.mat, recording what was verified in
        `self.source`; downloads and extraction under a lock in the folder written to, one process at a time."""
        self._root = None
        if self._needs_writing():
            with folder_for_writing(self._write_root()), exclusive(self._write_root(), "oxford17"):
                self._obtain_all()
        else:
            self._obtain_all()

    def _obtain_all(self) -> None:
        (self.jpg_dir, jpg_notes), (self.trimap_dir, trimap_notes) = (self._obtain_folder(*f) for f in _FOLDERS)
        missing = [(a, n) for a, n in ((IMAGES_ARCHIVE, jpg_notes), (TRIMAPS_ARCHIVE, trimap_notes)) if "missing" in n]
        if missing:
            what = " and ".join(f"{a} ({n['url']}: {n['missing']})" for a, n in missing)
            them = "them (or their extracted folders)" if len(missing) > 1 else "it (or its extracted folder)"
            raise DataError(f"Oxford17 is missing {what}: download {them} and put {them.split()[0]} "
                            f"in {self.data_dir.absolute()}")
        splits_notes: dict = {"url": self._url(SPLITS_FILE)}
        self.splits_path = self._find_or_download(SPLITS_FILE, splits_notes)
        self.source = {"jpg": jpg_notes, "trimaps": trimap_notes, SPLITS_FILE: splits_notes}

    # ---------------------------------------------------------------- setup
    def _pair_numbers(self) -> list[int]:
        """Numbers of the images that have a trimap; a trimap without its image is a DataError."""
        numbers = sorted(n for n in map(_number, self.trimap_dir.glob("image_*.png")) if n is not None)
        if not numbers:
            raise DataError(f"no trimaps image_XXXX.png in {self.trimap_dir}; "
                            f"get them from {self._url(TRIMAPS_ARCHIVE)}")
        images = [self.jpg_dir / f"image_{n:04d}.jpg" for n in numbers]
        missing = [path for path in images if not path.is_file()]
        if missing:
            raise DataError(f"image {missing[0]} is missing ({len(missing)} images with trimaps are); "
                            f"get it from {self._url(IMAGES_ARCHIVE)}")
        return numbers

    def splits(self) -> dict[str, list[int]]:
        """{"train", "val", "test": sorted image numbers} of split k, from the file names alone (no image
        is decoded); sets `split_source`. An overlap between the lists is an error, never a guess."""
        if self.jpg_dir is None:
            self.prepare_data()
        numbers, k = self._pair_numbers(), self.split
        if self.splits_path is not None:
            splits = load_datasplits(self.splits_path, k, numbers)
            self.split_source = f"official: {SPLITS_FILE} trn{k}/val{k}/tst{k}"
        else:  # from the data and --split only: a seed study keeps its val and test sets
            splits = generated_split(numbers, k)
            # the split alone decides "same settings"; why there was no file is announced and kept in `source`
            self.split_source = f"generated: stratified by class 50/25/25, rng seed {k}"
        if not splits["train"]:
            raise DataError(f"the Oxford17 train split is empty ({self.split_source}, {len(numbers)} images "
                            f"with trimaps)")
        return splits

    def _decode(self, numbers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and resize all pairs once (threads: PIL releases the GIL) -> uint8 tensors."""
        jobs = [(self.jpg_dir / f"image_{n:04d}.jpg", self.trimap_dir / f"image_{n:04d}.png") for n in numbers]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            pairs = list(pool.map(lambda job: _decode_pair(*job, self.image_size, self.unlabelled), jobs))
        return torch.stack([p[0] for p in pairs]), torch.from_numpy(np.stack([p[1] for p in pairs]))

    def setup(self, stage: str | None = None) -> None:
        """Split, decode and build the datasets (once; later calls do nothing)."""
        if self._pairs:
            return
        splits = self.splits()
        images, masks = self._decode([n for name in SPLIT_NAMES for n in splits[name]])
        sizes = [len(splits[name]) for name in SPLIT_NAMES]
        for name, x, m in zip(SPLIT_NAMES, images.split(sizes), masks.split(sizes)):
            self._pairs[name] = Oxford17Pairs(x, m, self.mean, self.std, flip=self.augment and name == "train")
        self.split_numbers = splits
        self.train_set, self.val_set, self.test_set = (self._pairs[n] for n in SPLIT_NAMES)
        counts = " / ".join(f"{len(splits[n])} {n}" for n in SPLIT_NAMES)
        missing = self.source.get(SPLITS_FILE, {}).get("missing", "not found")
        why = "" if self.splits_path else f" ({SPLITS_FILE} {missing})"
        _announce(f"Oxford17 split {self.split}: {self.split_source}{why}; {counts} images")

    @property
    def split_info(self) -> dict:
        """{"source": how the split was made, "hash": split_hash of its three lists} (after setup)."""
        self.setup()
        return {"source": self.split_source, "hash": split_hash(self.split_numbers)}

    def data_checksum(self) -> str:
        """Short sha256 of the split lists and the decoded images and masks (as resized)."""
        self.setup()
        digest = hashlib.sha256(repr(self.split_numbers).encode())
        for name in SPLIT_NAMES:
            for t in (self._pairs[name].images, self._pairs[name].masks):
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def settings(self) -> dict:
        """What of the data decides a run's numbers: the images and masks read (as resized, with the
        unlabelled rule applied, in split order), the split, the image size, the band and the flips."""
        return {"checksum": self.data_checksum(), "split": {"k": self.split, **self.split_info},
                "image_size": self.image_size, "unlabelled": self.unlabelled, "augment": self.augment}

    # ---------------------------------------------------------------- loaders
    def train_dataloader(self):
        return tensor_loader(self, self.train_set, True, self.num_workers, pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        return tensor_loader(self, self.val_set, False, self.num_workers, pin_memory=torch.cuda.is_available())

    def test_dataloader(self):
        return tensor_loader(self, self.test_set, False, self.num_workers, pin_memory=torch.cuda.is_available())

    def images(self, name: str) -> torch.Tensor:
        """uint8 images (N, 3, S, S) of split `name` ("train", "val" or "test"), as decoded."""
        self.setup()
        return self._pairs[name].images

    def split_masks(self, name: str) -> torch.Tensor:
        """uint8 masks (N, S, S) of split `name`, as decoded."""
        self.setup()
        return self._pairs[name].masks

    def val_sample_indices(self, n: int = 4) -> list[int]:
        """n validation indices spread over the flower classes: the first image of classes picked
        evenly from those in the split, then the second of each, ... (always the same)."""
        self.setup()
        by_class: dict[int, list[int]] = {}
        for i, number in enumerate(self.split_numbers["val"]):
            by_class.setdefault(class_of(number), []).append(i)
        classes = sorted(by_class)
        picked = [classes[j * len(classes) // min(n, len(classes))] for j in range(min(n, len(classes)))]
        order = picked + [c for c in classes if c not in picked]
        ranked = sorted((rank, order.index(c), i) for c in order for rank, i in enumerate(by_class[c]))
        return [i for *_, i in ranked[:n]]


@rank_zero_only
def _announce(line: str) -> None:
    print(line, flush=True)
