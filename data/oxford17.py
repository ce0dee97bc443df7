"""Oxford 17 flowers with trimaps, as a binary flower / background segmentation data module.

Sources (VGG Oxford, https://www.robots.ox.ac.uk/~vgg/data/flowers/17/): `17flowers.tgz`
(jpg/image_0001.jpg .. image_1360.jpg, 80 per class in class order), `trimaps.tgz`
(trimaps/image_XXXX.png for 848 of the images) and `datasplits.mat` (trn1..3 / val1..3 / tst1..3,
1-based image numbers). Only images that have a trimap are used.

Masks: trimap colour (128, 0, 0) = flower (1); (0, 0, 0) = the unlabelled band = ignore (255), or
background with unlabelled="background"; every other colour = background (0).

Files (`prepare_data`, through data/download.py): existing jpg/ and trimaps/ folders in `data_dir`
(or its cache folder) are used as they are; otherwise the archives there are extracted, or
downloaded first when `download=True`. When `data_dir` is not writable, extraction and downloads
go to its cache folder (`data.download.cache_folder`). One process at a time extracts / downloads
(a file lock); the others wait and then find the files. md5 rule: a DOWNLOADED file with a known
md5 that does not match is moved aside to `<name>.bad-md5` and is a DataError; a file the user put
in `data_dir` is used as given (its md5 result is recorded, with a warning on a mismatch), since the
md5s known here could not be checked against the release. A missing datasplits.mat is not an
error: setup falls back to a split generated from the data and `split` alone (stratified by class,
50/25/25; `--seed` plays no part). What was found, downloaded, md5-checked and extracted is
recorded in `self.source`; the split's source and hash in `split_info`.

Every image and mask is decoded and resized once in `setup` and kept as uint8 tensors in memory;
the datasets only normalise (and optionally flip), a whole batch at a time. `cache_features` can further replace
the train / val images by the frozen trunk's features (see its docstring).
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
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from data.batching import distributed_info, keep_batch, make_sampler
from data.download import (DownloadFailed, cache_folder, calculate_md5, exclusive, extract, fetch, move_aside,
                           write_root)
from data.feature_store import array_digest, identity_key
from data.sampling import loader_generator
from errors import DataError, UsageError

URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
IMAGES_ARCHIVE = "17flowers.tgz"
TRIMAPS_ARCHIVE = "trimaps.tgz"
SPLITS_FILE = "datasplits.mat"
# md5 values as listed by public loader code (not verifiable here); none is known for trimaps.tgz
MD5 = {
    IMAGES_ARCHIVE: "b59a65d8d1a99cd66944d474e1289eab",
    TRIMAPS_ARCHIVE: None,
    SPLITS_FILE: "4828cddfd0d803c5abbdebcb1e148a1e",
}
IMAGES_PER_CLASS = 80
NUM_CLASSES = 17
FLOWER, BACKGROUND, IGNORE_INDEX = 1, 0, 255
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
    """(..., 3) uint8 trimap colours -> (...) uint8 mask: 1 flower, 0 background, and the
    black unlabelled band 255 (unlabelled="ignore") or 0 (unlabelled="background")."""
    if unlabelled not in UNLABELLED_CHOICES:
        raise UsageError(f"unlabelled must be one of {UNLABELLED_CHOICES}, got {unlabelled!r}")
    rgb = np.asarray(rgb, dtype=np.uint8)
    code = _rgb_code(rgb)  # one int per pixel: two comparisons instead of six
    mask = np.full(code.shape, BACKGROUND, dtype=np.uint8)
    mask[code == _rgb_code(np.array(FLOWER_RGB, dtype=np.uint8))] = FLOWER
    if unlabelled == "ignore":
        mask[code == _rgb_code(np.array(UNLABELLED_RGB, dtype=np.uint8))] = IGNORE_INDEX
    return mask


def class_of(number: int) -> int:
    """0-based class of a 1-based image number (80 consecutive images per class)."""
    return (number - 1) // IMAGES_PER_CLASS


def generated_split(numbers, seed: int) -> dict[str, list[int]]:
    """Deterministic split stratified by class: per class, shuffle with `seed`, then the first
    ceil(m/2) go to train, half of the rest (rounded down) to val, the remainder to test.
    The DataModule passes seed = its `split` (1, 2 or 3), never the training seed."""
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


def _decode_pair(jpg: Path, png: Path, size: int, unlabelled: str) -> tuple[np.ndarray, np.ndarray]:
    """Image resized bilinearly (PIL antialiases when shrinking), mask resized NEAREST, both
    size x size; an unreadable file is a DataError naming it."""
    try:
        with Image.open(jpg) as im:
            image = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {jpg} ({err}); "
                        f"replace it with the file from {URL}{IMAGES_ARCHIVE}") from err
    try:
        with Image.open(png) as im:
            mask = trimap_to_mask(np.asarray(im.convert("RGB")), unlabelled)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read trimap {png} ({err}); "
                        f"replace it with the file from {URL}{TRIMAPS_ARCHIVE}") from err
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return image, mask


class Oxford17Pairs(Dataset):
    """(image float (3,S,S) normalised, mask long (S,S) in {0,1,255}) from in-memory uint8
    tensors; `flip=True` flips image and mask together with probability 0.5."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, mean, std, flip: bool = False):
        self.images, self.masks, self.flip = images, masks, flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> float normalised, on the images' device."""
        mean, std = self.mean.to(images_uint8.device), self.std.to(images_uint8.device)
        return (images_uint8.float() / 255 - mean) / std

    def __getitem__(self, i):
        image, mask = self.normalise(self.images[i]), self.masks[i].long()
        if self.flip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask

    def __getitems__(self, indices):
        """A whole batch at once (see data/batching.py): one gather and one normalisation."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images, masks = self.normalise(self.images[index]), self.masks[index].long()
        if self.flip:
            flip = torch.rand(len(index)) < 0.5
            images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
        return images, masks


class FeatureDataset(TensorDataset):
    """Cached trunk features and their masks: items (features (256,h,w) in the cache dtype,
    mask long (S,S)); masks are stored as uint8 and widened per item."""

    def __getitem__(self, i):
        features, mask = self.tensors
        return features[i], mask[i].long()

    def __getitems__(self, indices):
        """A whole batch at once: stacking items and widening masks one by one took 60 % of a
        cached epoch (features gathered in one step, masks widened once per batch)."""
        features, masks = self.tensors
        index = torch.as_tensor(indices, dtype=torch.long, device=features.device)
        return features[index], masks[index].long()


class Oxford17(pl.LightningDataModule):
    """Oxford 17 flowers with trimaps: binary flower (1) / background (0) / ignore (255) masks.

    Extra arguments beyond the basics: `augment` (random horizontal flip of train items),
    `cache_dir` (where archives are extracted/downloaded when `data_dir` is not writable; default
    `data.download.cache_folder("oxford17", data_dir)`) and `checksums` (override of the md5 table,
    e.g. {"17flowers.tgz": None} to skip a check). `split` alone (with the data) decides the split;
    `seed` only orders the training batches.
    After `setup`: `train_set` / `val_set` / `test_set`, `split_numbers`, `split_source`,
    `split_info`, `source`.
    """

    def __init__(
        self,
        data_dir="datasets/oxford17",
        split: int = 1,
        image_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 0,
        unlabelled: str = "ignore",
        download: bool = True,
        seed: int = 0,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        base_url: str = URL,
        augment: bool = False,
        cache_dir=None,
        checksums: dict | None = None,
    ):
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
        self.jpg_dir = self.trimap_dir = self.splits_path = self._root = None
        self.source: dict = {}
        self.split_source: str | None = None
        self.split_numbers: dict[str, list[int]] = {}
        self.train_set = self.val_set = self.test_set = None
        self._pairs: dict[str, Oxford17Pairs] = {}
        self.feature_cache_bytes = 0
        self.feature_cache_location: str | None = None
        self.feature_store_info: dict | None = None
        self._feature_identity: dict | None = None  # what produced the features now in train/val/test_set

    # ---------------------------------------------------------------- files
    def _url(self, name: str) -> str:
        return self.base_url + name

    def _lookup_roots(self) -> list[Path]:
        return [self.data_dir, self.cache_dir]

    def _check_md5(self, path: Path, name: str, notes: dict, downloaded: bool) -> None:
        """Record the md5 check in notes. A downloaded file with the wrong md5 is moved aside to
        <name>.bad-md5 and is a DataError; a file the user put there is used as given (warning)."""
        expected = self.md5.get(name)
        if expected is None:
            notes["md5"] = "no md5 known"
            return
        got = calculate_md5(str(path))
        if got == expected:
            notes["md5"] = f"checked ({expected})"
            return
        if not downloaded:
            notes["md5"] = f"differs from the official {expected} (got {got}); used as given"
            warnings.warn(f"Oxford17: {path} has md5 {got}, not the official {expected}; using it as given",
                          stacklevel=4)
            return
        raise DataError(f"{path} downloaded from {self._url(name)} has md5 {got}, expected {expected}; "
                        f"{move_aside(path)}: download it again and put it in {path.parent}")

    def _find(self, name: str) -> Path | None:
        return next((root / name for root in self._lookup_roots() if (root / name).is_file()), None)

    def _find_folder(self, folder: str, pattern: str) -> Path | None:
        return next((root / folder for root in self._lookup_roots() if _count(root / folder, pattern)), None)

    def _find_or_download(self, name: str, notes: dict) -> Path | None:
        """Path of file `name` in data_dir (or the cache), downloading it if allowed; None if it is
        missing and cannot be downloaded (the reason goes into notes["missing"])."""
        path = self._find(name)
        if path is not None:
            notes["origin"] = f"found {path}"
            self._check_md5(path, name, notes, downloaded=False)
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
        notes["origin"] = f"downloaded {url} to {path}"
        self._check_md5(path, name, notes, downloaded=True)
        return path

    def _obtain_folder(self, folder: str, archive: str, pattern: str) -> tuple[Path | None, dict]:
        """An existing `folder` with files matching `pattern`, else the extracted `archive`."""
        notes: dict = {"url": self._url(archive)}
        found = self._find_folder(folder, pattern)
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
        for folder, archive, pattern in _FOLDERS:
            if self._find_folder(folder, pattern) is None and (self.download or self._find(archive) is not None):
                return True
        return self.download and self._find(SPLITS_FILE) is None

    def prepare_data(self) -> None:
        """Find (or extract, or download) jpg/, trimaps/ and datasplits.mat; see the module docstring.
        What was verified is recorded in `self.source`. When something must be downloaded or
        extracted, one process at a time does it (a lock in the folder written to); the others
        then find the files."""
        self._root = None
        if self._needs_writing():
            with exclusive(self._write_root(), "oxford17"):
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

    def _make_split(self, numbers: list[int]) -> dict[str, list[int]]:
        k = self.split
        if self.splits_path is not None:
            splits = load_datasplits(self.splits_path, k, numbers)
            self.split_source = f"{SPLITS_FILE} trn{k}/val{k}/tst{k}"
        else:  # from the data and --split only: a seed study keeps its val and test sets
            splits = generated_split(numbers, k)
            self.split_source = f"generated: stratified by class 50/25/25, split {k} (rng seed {k})"
            why = self.source.get(SPLITS_FILE, {}).get("missing", "not found")
            warnings.warn(f"Oxford17: {SPLITS_FILE} unavailable ({why}); using a {self.split_source} split",
                          stacklevel=3)
        sets = [set(splits[name]) for name in SPLIT_NAMES]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), "Oxford17 splits overlap"
        if not splits["train"]:
            raise DataError(f"the Oxford17 train split is empty "
                            f"({self.split_source}, {len(numbers)} images with trimaps)")
        return splits

    def _decode(self, numbers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and resize all pairs once (threads: PIL releases the GIL) -> uint8 tensors."""
        jobs = [(self.jpg_dir / f"image_{n:04d}.jpg", self.trimap_dir / f"image_{n:04d}.png") for n in numbers]
        size = self.image_size
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            pairs = list(pool.map(lambda job: _decode_pair(*job, size, self.unlabelled), jobs))
        images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
        masks = torch.from_numpy(np.stack([p[1] for p in pairs]))
        return images, masks

    def setup(self, stage: str | None = None) -> None:
        """Split, decode and build the datasets (once; later calls do nothing)."""
        if self._pairs:
            return
        if self.jpg_dir is None:
            self.prepare_data()
        splits = self._make_split(self._pair_numbers())
        order = [n for name in SPLIT_NAMES for n in splits[name]]
        images, masks = self._decode(order)
        start = 0
        for name in SPLIT_NAMES:
            stop = start + len(splits[name])
            flip = self.augment and name == "train"
            self._pairs[name] = Oxford17Pairs(images[start:stop], masks[start:stop], self.mean, self.std, flip)
            start = stop
        self.split_numbers = splits
        self.train_set, self.val_set, self.test_set = (self._pairs[n] for n in SPLIT_NAMES)

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

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        # cached features are plain tensor indexing: worker processes would only add IPC cost
        cached = isinstance(dataset, FeatureDataset)
        on_cuda = cached and dataset.tensors[0].is_cuda
        workers = 0 if cached else self.num_workers
        # under DDP: shuffled shards for training, disjoint unpadded ones for exact evaluation
        sampler = make_sampler(dataset, shuffle, *distributed_info(self), seed=self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, generator=loader_generator(self.seed),
                          num_workers=workers, collate_fn=keep_batch,
                          pin_memory=torch.cuda.is_available() and not on_cuda, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def split_masks(self, name: str) -> torch.Tensor:
        """uint8 masks (N, S, S) of split `name` ("train", "val" or "test"), as decoded."""
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
        if not classes:
            return []
        picked_classes = [classes[int(j * len(classes) / min(n, len(classes)))] for j in range(min(n, len(classes)))]
        order = picked_classes + [c for c in classes if c not in picked_classes]
        out, rank = [], 0
        while len(out) < min(n, len(self.split_numbers["val"])):
            out += [by_class[c][rank] for c in order if rank < len(by_class[c])][: n - len(out)]
            rank += 1
        return out

    def val_samples(self, n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n validation items of several flower classes (`val_sample_indices`; always the same, never
        flipped): (images uint8 (n,3,S,S), masks long (n,S,S), normalised float images (n,3,S,S))."""
        self.setup()
        pairs = self._pairs["val"]
        index = torch.as_tensor(self.val_sample_indices(n), dtype=torch.long)
        images = pairs.images[index]
        return images.clone(), pairs.masks[index].long(), pairs.normalise(images)

    # ---------------------------------------------------------------- feature cache
    def _features_of(self, pairs: Oxford17Pairs, name: str, feature_fn, device, batch_size, out=None,
                     dtype=torch.float32, store=torch.device("cpu")):
        """feature_fn over every image of `pairs`, batch by batch, written into `out` (a NumPy
        memory map of the store) or into a new tensor in `dtype` on `store`."""
        pin = store.type == "cpu" and device.type == "cuda" and out is None
        for start in tqdm(range(0, len(pairs), batch_size), desc=f"Oxford17: {name} features", unit="batch"):
            x = pairs.normalise(pairs.images[start : start + batch_size].to(device))
            with torch.no_grad():
                f = feature_fn(x)
            if out is None:  # allocate once: no 2x peak from torch.cat
                out = torch.empty((len(pairs), *f.shape[1:]), dtype=dtype, device=store, pin_memory=pin)
            if isinstance(out, np.ndarray):
                out[start : start + len(f)] = f.to(torch.float32 if out.dtype == np.float32 else torch.float16).cpu().numpy()
            else:
                out[start : start + len(f)] = f.to(dtype)
        if out is None:
            raise DataError(f"the Oxford17 {name} split is empty: nothing to cache")
        return out

    def feature_identity(self, identity: dict, dtype, splits) -> dict:
        """Everything that determines the stored features: the trunk's `identity` (backbone, weights,
        precision), the image size, normalisation, dtype and the images (content and order) per split."""
        return {"trunk": identity, "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "dtype": str(dtype).replace("torch.", ""),
                "images": {name: array_digest(self._pairs[name].images) for name in splits}}

    def cache_features(self, feature_fn, device, batch_size: int = 16, dtype=torch.float32,
                       keep_on_device: bool = False, identity: dict | None = None, store=None,
                       writer: bool = True, barrier=None, feature_shape=None) -> bool:
        """Replace the splits' images by the frozen trunk's features (FeatureDatasets of (features, masks)).

        `feature_fn` (images -> features, e.g. FineTunedDeepLabV3.features) must be deterministic
        (frozen, eval mode); `identity` says what it is (backbone, weights, precision). Features are
        kept only for the `identity` they were made with: a later call with another identity (or
        with identity None) computes them again, never serving another function's features.

        store=None: train and val are computed in memory (CPU, pinned when `device` is CUDA, or on
        `device` with keep_on_device=True); the test set keeps its images (full network).
        store=FeatureStore: train, val AND test are read from the store when it holds this exact
        identity (memory-mapped; no trunk forward at all), else computed once and written there.
        Under DDP pass writer=True on one process per machine and the strategy's `barrier`: the
        writer reads or builds the entry, then every process reads it. feature_shape: (C, h, w) of
        feature_fn's output when known (saves a probe forward pass when the store is complete).

        Sets `feature_store_info` (location, bytes, reused, key) and `feature_cache_bytes` /
        `feature_cache_location`. Returns False (and does nothing) when augment is on, since flipped
        inputs have other features; True otherwise.

        dtype defaults to float32, so that head(cached) equals the full forward pass. float16 halves
        the memory; it rounds features to the 10-bit mantissa that TF32 convolutions (PyTorch's CUDA
        default) use anyway, so on a GPU the logits matched the full model to 1e-7, but against a
        float32 CPU forward they moved by up to 2.6e-3 (224 px, head weights of std 0.1)."""
        if self.augment:
            return False
        self.setup()
        splits = SPLIT_NAMES if store is not None else ("train", "val")
        full_identity = None if identity is None else {**self.feature_identity(identity, dtype, splits),
                                                       "splits": list(splits)}
        if full_identity is not None and full_identity == self._feature_identity:
            return True  # these very features are already in place
        device = torch.device(device)
        if store is None:
            self._cache_in_memory(feature_fn, device, batch_size, dtype, keep_on_device)
        else:
            self._cache_in_store(feature_fn, device, batch_size, dtype, full_identity, store, writer, barrier,
                                 feature_shape)
        self._feature_identity = full_identity
        return True

    def _cache_in_memory(self, feature_fn, device, batch_size, dtype, keep_on_device):
        store = device if keep_on_device else torch.device("cpu")
        total = 0
        self.test_set = self._pairs["test"]
        for name in ("train", "val"):
            pairs = self._pairs[name]
            features = self._features_of(pairs, name, feature_fn, device, batch_size, dtype=dtype, store=store)
            total += features.nbytes
            setattr(self, f"{name}_set", FeatureDataset(features, pairs.masks.to(store)))
        self.feature_cache_bytes = total
        pinned = " (pinned)" if store.type == "cpu" and device.type == "cuda" else ""
        self.feature_cache_location = f"memory, {str(dtype).replace('torch.', '')}, device {store}{pinned}"
        self.feature_store_info = {"location": "memory", "bytes": total, "reused": False, "key": None,
                                   "splits": ["train", "val"]}

    def _cache_in_store(self, feature_fn, device, batch_size, dtype, identity, store, writer, barrier, feature_shape):
        if identity is None:
            raise UsageError("a persistent feature store needs the identity of the feature function")
        np_dtype = str(dtype).replace("torch.", "")
        if np_dtype not in ("float32", "float16"):
            raise UsageError(f"the feature store keeps float32 or float16 features, not {np_dtype}")
        key = identity_key(identity)
        if feature_shape is None:  # one image through the trunk tells the feature shape
            with torch.no_grad():
                probe = self._pairs["train"].normalise(self._pairs["train"].images[:1].to(device))
                feature_shape = tuple(feature_fn(probe).shape[1:])
        expected = {name: ((len(self._pairs[name]), *feature_shape), np_dtype) for name in SPLIT_NAMES}
        arrays, reused = None, True
        if writer:
            arrays = store.open(key, expected)
            if arrays is None:
                reused = False
                entry = store.create(key, identity, {n: shape for n, (shape, _) in expected.items()}, np_dtype)
                try:
                    for name in SPLIT_NAMES:
                        self._features_of(self._pairs[name], name, feature_fn, device, batch_size, out=entry.arrays[name])
                except BaseException:
                    entry.abort()
                    raise
                entry.commit()  # False: a concurrent run committed the same entry first; read that one
                arrays = store.open(key, expected)
        if barrier is not None:
            barrier()
        if arrays is None:
            arrays = store.open(key, expected, repair=False)
            if arrays is None:
                raise DataError(f"the feature store entry {store.entry(key)} is missing or broken after it was "
                                f"built; delete it, or use --no-feature-cache")
        for name in SPLIT_NAMES:
            features = torch.from_numpy(arrays[name])  # memory-mapped: pages are read as batches need them
            setattr(self, f"{name}_set", FeatureDataset(features, self._pairs[name].masks))
        total = store.nbytes(key)
        self.feature_cache_bytes = total
        self.feature_cache_location = f"store {store.entry(key)}, {np_dtype}, memory-mapped"
        self.feature_store_info = {"location": str(store.entry(key)), "bytes": total, "reused": reused, "key": key,
                                   "splits": list(SPLIT_NAMES)}
        if writer:
            print(f"feature store: {'reused' if reused else 'built'} {store.entry(key)} "
                  f"({total / 2**20:.1f} MiB, train/val/test, {np_dtype})", flush=True)

    # ---------------------------------------------------------------- summary
    def data_summary(self) -> dict:
        """Counts per split, split source, file verification notes and feature-cache facts
        (JSON-serialisable, for summary.json)."""
        return {
            "dataset": "oxford17",
            "data_dir": str(self.data_dir),
            "image_size": self.image_size,
            "unlabelled": self.unlabelled,
            "counts": {name: len(v) for name, v in self.split_numbers.items()},
            "split_source": self.split_source,
            "source": self.source,
            "augment": self.augment,
            "feature_cache_bytes": self.feature_cache_bytes,
            "feature_cache_location": self.feature_cache_location,
            "feature_store": self.feature_store_info,
        }
