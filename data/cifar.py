"""CIFAR-10 horses for colorization: find, download, verify and read the python batches.

`data_dir` works like torchvision's `root`: it holds `cifar-10-batches-py/` and/or the archive
`cifar-10-python.tar.gz`.
"""
import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5

from color.palette import check_palette, load_palette, nearest_colour
from data.batching import TensorBatches, tensor_loader
from data.download import DownloadFailed, cache_folder, extract, fetch, move_aside, prepare_once, write_root
from errors import DataError

CIFAR_URL, CIFAR_ARCHIVE, CIFAR_MD5 = CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5
CIFAR_FOLDER = CIFAR10.base_folder
HORSE = 7
TRAIN_BATCHES = tuple(name for name, _ in CIFAR10.train_list)
TEST_BATCHES = tuple(name for name, _ in CIFAR10.test_list)
# md5 of the files in the official archive, as torchvision lists them
OFFICIAL_MD5 = dict(CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]])
_WARNED_FOLDERS = set()  # folders already reported as non-official (warn once per process)


# ----------------------------------------------------------------------------- reading batches

def load_batches(folder, names):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the CIFAR-10 python batches `names` in `folder`:
    the one place that reads them; a missing, truncated or foreign file is a DataError naming it."""
    images, labels = zip(*(_read_batch(Path(folder) / name) for name in names))
    return np.concatenate(images), np.concatenate(labels)


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle that names a class or function a CIFAR-10 batch does not contain."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what the official batches hold: dicts, lists, ints, byte strings and numpy uint8
    arrays. Any other global (os.system, ...) is refused before it is looked up: a crafted file cannot run code."""

    # numpy 1 pickles name numpy.core.multiarray, numpy 2 numpy._core.multiarray (the old name still
    # imports); Python 3 writes bytes in protocol 2 as _codecs.encode(str, "latin1") (batches re-saved
    # by Python 3): a pure data conversion.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def __init__(self, file):
        super().__init__(file, encoding="bytes")  # Python 2 strings come back as bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise ForbiddenGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _read_batch(path):
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} is missing; download {CIFAR_ARCHIVE} from {CIFAR_URL} "
                        f"and extract it next to {path.parent.name}/")
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f).load()
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
            raise ValueError(f"data {data.shape} / labels {labels.shape} are not N x 3072 / N")
    except ForbiddenGlobal as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch: it asks to load {e}, which the official "
                        f"batches never contain; refused without loading it. Use the files of {CIFAR_URL}") from None
    except Exception as e:  # any unpickling or layout error means the same thing to the user
        raise DataError(f"{path} is truncated or not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        f"delete it and re-download from {CIFAR_URL} or extract {CIFAR_ARCHIVE} again") from e
    return data.reshape(-1, 3, 32, 32), labels


# ----------------------------------------------------------------------------- finding the data

def _complete(folder):
    return all((folder / name).is_file() for name in TRAIN_BATCHES + TEST_BATCHES)


def find_batch_folder(data_dir):
    """The extracted batch folder in `data_dir`, `data_dir` itself (the user points at it) or its cache folder,
    or None."""
    data_dir = Path(data_dir).expanduser()
    for folder in (data_dir / CIFAR_FOLDER, data_dir, cache_folder("cifar", data_dir) / CIFAR_FOLDER):
        if _complete(folder):
            return folder.resolve()
    return None


def ensure_cifar(data_dir, download=True, url=CIFAR_URL, md5=CIFAR_MD5):
    """The extracted batch folder for `data_dir`; else the archive there (or in its cache, or fetched from
    `url` if `download`) is checked against `md5` (None: not checked; a mismatch is moved aside, never
    deleted) and extracted, by one process at a time. A DataError says what to do when all of this fails."""
    data_dir = Path(data_dir).expanduser().absolute()
    folder = find_batch_folder(data_dir)
    if folder is not None:
        return folder
    cache = cache_folder("cifar", data_dir)  # written to when data_dir is read-only
    archives = (data_dir / CIFAR_ARCHIVE, cache / CIFAR_ARCHIVE)
    no_data = DataError(f"no CIFAR-10 data in {data_dir} and downloading is off; download {CIFAR_ARCHIVE} "
                        f"from {url} and put it (or its extracted {CIFAR_FOLDER}/ folder) there, or point "
                        f"--data-dir at a folder that holds it")
    if not download and not any(p.is_file() for p in archives):
        raise no_data
    out_dir = write_root(data_dir, cache, CIFAR_ARCHIVE)

    def make():
        archive = next((p for p in archives if p.is_file()), None)
        if archive is None:
            if not download:  # the archive went away (moved aside by another process) while we waited
                raise no_data
            try:
                archive = fetch(url, out_dir / CIFAR_ARCHIVE)
            except DownloadFailed as e:
                raise DataError(f"{e}. Download {CIFAR_ARCHIVE} from {url} by hand and put it (or its extracted "
                                f"{CIFAR_FOLDER}/ folder) in {data_dir}, or point --data-dir at a folder "
                                f"that holds a local copy") from e
        if md5 is not None and (actual := calculate_md5(str(archive))) != md5:
            raise DataError(f"{archive} has md5 {actual}, expected {md5} (truncated or a different file); "
                            f"{move_aside(archive)}. Download {CIFAR_ARCHIVE} again from {url}")
        hint = f"delete it and download {CIFAR_ARCHIVE} again from {url}"
        return extract(archive, out_dir, CIFAR_FOLDER, _complete, hint).resolve()

    return prepare_once(out_dir, CIFAR_ARCHIVE, lambda: find_batch_folder(data_dir), make)


def md5_mismatches(folder):
    """Names of the present batch files whose md5 differs from the official release."""
    return [name for name, md5 in OFFICIAL_MD5.items()
            if (folder / name).is_file() and calculate_md5(str(folder / name)) != md5]


# ----------------------------------------------------------------------------- the DataModule

def accelerator_device(datamodule):
    """The CUDA device this process trains on, or None (no Trainer yet, or not a CUDA run)."""
    trainer = getattr(datamodule, "trainer", None)
    device = None if trainer is None else trainer.strategy.root_device
    return device if device is not None and device.type == "cuda" else None


def horses(folder, names, palette):
    """(grey (N,1,32,32), target (N,32,32) nearest palette colours, rgb (N,3,32,32)) of the horses in `names`.
    grey = (R + G + B) / 765: sums of uint8 are exact in float32, so it is reproducible bit for bit."""
    images, labels = load_batches(folder, names)
    images = images[labels == HORSE]
    if len(images) == 0:
        raise DataError(f"no horses (label {HORSE}) in {', '.join(str(folder / n) for n in names)}")
    u8 = torch.from_numpy(np.ascontiguousarray(images))
    grey = u8.sum(dim=1, keepdim=True, dtype=torch.float32) / 765.0
    rgb = u8.float() / 255.0
    return grey, nearest_colour(rgb, palette), rgb


class CIFARHorses(pl.LightningDataModule):
    """CIFAR-10 horses in memory: train from data_batch_1..5 (5000), val from test_batch (1000), as (grey,
    target) items; validation items also carry the true RGB, for the colour-quality metrics. palette: None (the
    shipped one), a .npy path or a (K, 3) tensor. On a CUDA Trainer batches are gathered on the GPU."""

    def __init__(self, data_dir="datasets", batch_size=100, palette=None, num_workers=0, download=True,
                 url=CIFAR_URL, md5=CIFAR_MD5, seed=0):
        super().__init__()
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.download, self.url, self.md5 = download, url, md5
        # Loaded now, so that models can be built from num_colours before setup().
        if palette is None or isinstance(palette, (str, Path)):
            self.palette_source, self.palette = str(palette or "default"), load_palette(palette)
        else:
            self.palette_source, self.palette = "tensor", check_palette(palette, "tensor")
        self.num_colours = len(self.palette)
        self.train_set = self.val_set = self.source = None

    def prepare_data(self):
        """Find, or extract / download, the batch folder in data_dir or its cache: on every machine (Lightning's
        prepare_data_per_node), one process at a time, under a lock (data/download.py); the others wait."""
        ensure_cifar(self.data_dir, self.download, self.url, self.md5)

    def setup(self, stage=None):
        """Build the train and val tensors once; later calls do nothing."""
        if self.train_set is not None:
            return
        folder = ensure_cifar(self.data_dir, self.download, self.url, self.md5)
        mismatched = md5_mismatches(folder)
        if mismatched and str(folder) not in _WARNED_FOLDERS:
            _WARNED_FOLDERS.add(str(folder))
            warnings.warn(f"{CIFAR_FOLDER} in {folder.parent}: {len(mismatched)} files differ from the official "
                          f"release (md5); using them anyway", UserWarning, stacklevel=2)
        train_grey, train_target, _ = horses(folder, TRAIN_BATCHES, self.palette)
        self.train_set = TensorBatches(train_grey, train_target)
        grey, target, rgb = horses(folder, TEST_BATCHES, self.palette)
        # rgb channels-last: the colour-quality update compares it pixel by pixel with palette colours (N, H, W, 3)
        self.val_set = TensorBatches(grey, target, rgb.contiguous(memory_format=torch.channels_last))
        self.source = {"folder": str(folder), "official_md5": not mismatched, "md5_mismatches": mismatched,
                       "train": len(train_grey), "val": len(self.val_set), "palette": self.palette_source,
                       "num_colours": self.num_colours, "checksum": self.data_checksum()}

    def _loader(self, dataset, train):
        device = accelerator_device(self)
        if device is not None:  # gathered on the GPU: no copy of the data per step, no workers
            return tensor_loader(self, dataset.to(device), train)
        return tensor_loader(self, dataset, train, self.num_workers)

    def train_dataloader(self):
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        self.setup()
        return self._loader(self.val_set, train=False)

    def sample_batch(self, n=8):
        """(grey, target, rgb) of the first `n` validation images: the same every epoch."""
        self.setup()
        return tuple(t[:n] for t in self.val_set.tensors)

    def data_checksum(self):
        """Short sha256 of the train and val grey + target tensors, for reproducibility records."""
        self.setup()
        digest = hashlib.sha256()
        for t in [*self.train_set.tensors, *self.val_set.tensors[:2]]:
            digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def settings(self):
        """What of the data decides a run's numbers: the tensors read and the palette."""
        palette = hashlib.sha256(self.palette.float().numpy().tobytes()).hexdigest()[:16]
        return {"checksum": self.data_checksum(), "palette": palette}
