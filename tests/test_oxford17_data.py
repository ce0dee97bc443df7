"""Oxford17 data module on tiny fixture trees (and on the real copy in ../shared/data when there)."""

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler

import data.download as download
import data.oxford17 as ox
from data.oxford17 import FeatureDataset, Oxford17, generated_split, trimap_to_mask
from tests.fixtures.oxford17 import image_numbers, trimap_numbers, write_oxford17, write_oxford17_archives
from errors import DataError, UsageError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford17"
NO_MD5 = {"17flowers.tgz": None, "datasplits.mat": None}


def _dm(root, **kwargs):
    kwargs = {"image_size": 32, "download": False, "checksums": NO_MD5, **kwargs}
    return Oxford17(root, **kwargs)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """3 classes x 8 images, trimaps for every other image, varying odd sizes, datasplits.mat."""
    return write_oxford17(tmp_path_factory.mktemp("ox") / "flowers", with_trimaps_every=2, size=None)


@pytest.fixture(scope="module")
def ready(tree):
    dm = _dm(tree)
    dm.setup()
    return dm


def _copy(tree, tmp_path, splits=True):
    root = Path(shutil.copytree(tree, tmp_path / "copy"))
    if not splits:
        (root / "datasplits.mat").unlink()
    return root


# ---------------------------------------------------------------- splits
def test_counts_follow_datasplits_mat_restricted_to_trimaps(tree, ready):
    mat = scipy.io.loadmat(str(tree / "datasplits.mat"))
    with_trimap = set(trimap_numbers(3, 8, 2))
    for name, key in (("train", "trn1"), ("val", "val1"), ("test", "tst1")):
        expected = sorted(set(mat[key].ravel().astype(int)) & with_trimap)
        assert ready.split_numbers[name] == expected
    assert [len(ready.train_set), len(ready.val_set), len(ready.test_set)] == [6, 3, 3]
    assert ready.split_source == "datasplits.mat trn1/val1/tst1"
    assert ready.data_summary()["counts"] == {"train": 6, "val": 3, "test": 3}


def test_images_without_trimaps_are_excluded_and_splits_disjoint(ready):
    used = [n for name in ("train", "val", "test") for n in ready.split_numbers[name]]
    assert len(used) == len(set(used))
    assert sorted(used) == trimap_numbers(3, 8, 2)
    assert len(image_numbers(3, 8)) == 24 > len(used)


def test_split_k_selects_the_mats_lists(tree):
    dm = _dm(tree, split=2)
    dm.setup()
    mat = scipy.io.loadmat(str(tree / "datasplits.mat"))
    assert dm.split_numbers["train"] == sorted(set(mat["trn2"].ravel().astype(int)) & set(trimap_numbers(3, 8, 2)))
    assert dm.split_source == "datasplits.mat trn2/val2/tst2"


def test_generated_split_without_mat_is_deterministic_and_stratified(tree, tmp_path):
    root = _copy(tree, tmp_path, splits=False)
    with pytest.warns(UserWarning, match="datasplits.mat unavailable.*generated"):
        first = _dm(root)
        first.setup()
    with pytest.warns(UserWarning):
        again = _dm(root)
        again.setup()
    assert first.split_numbers == again.split_numbers
    assert first.split_source == "generated: stratified by class 50/25/25, split 1 (rng seed 1)"
    numbers = list(range(1, 81)) + list(range(161, 201))  # classes 0 (80 images) and 2 (40)
    split = generated_split(numbers, seed=5)
    for c, m in ((0, 80), (2, 40)):
        counts = [sum(1 for n in split[s] if (n - 1) // 80 == c) for s in ("train", "val", "test")]
        assert counts == [m // 2, m // 4, m // 4]
    assert sorted(sum(split.values(), [])) == numbers
    assert generated_split(numbers, seed=6) != split  # the rng seed (= --split) varies the split
    assert generated_split(numbers, seed=5) == split


def test_generated_split_depends_on_split_not_seed(tree, tmp_path):
    root = _copy(tree, tmp_path, splits=False)
    made = {}
    with pytest.warns(UserWarning, match="generated"):
        for seed, split in ((0, 1), (123, 1), (0, 2), (123, 2)):
            dm = _dm(root, seed=seed, split=split)
            dm.setup()
            made[seed, split] = (dm.split_numbers, dm.split_info)
    assert made[0, 1] == made[123, 1] and made[0, 2] == made[123, 2]  # --seed changes nothing
    assert made[0, 1][0] != made[0, 2][0]  # --split does
    info1, info2 = made[0, 1][1], made[0, 2][1]
    assert info1["source"] == "generated: stratified by class 50/25/25, split 1 (rng seed 1)"
    assert info1["hash"] == ox.split_hash(made[0, 1][0]) != info2["hash"]
    assert len(info1["hash"]) == 16


def test_split_info_of_the_mat(tree, ready):
    assert ready.split_info == {"source": "datasplits.mat trn1/val1/tst1", "hash": ox.split_hash(ready.split_numbers)}
    moved = {**ready.split_numbers, "val": ready.split_numbers["test"], "test": ready.split_numbers["val"]}
    assert ox.split_hash(moved) != ready.split_info["hash"]  # the hash knows which list an image is in


def test_overlapping_mat_is_a_data_error(tree, tmp_path):
    root = _copy(tree, tmp_path)
    mat = {k: v for k, v in scipy.io.loadmat(str(root / "datasplits.mat")).items() if not k.startswith("__")}
    mat["val1"] = np.concatenate([mat["val1"], mat["tst1"][:, :1]], axis=1)
    scipy.io.savemat(str(root / "datasplits.mat"), mat)
    with pytest.raises(DataError, match="datasplits.mat lists images"):
        _dm(root).setup()


# ---------------------------------------------------------------- masks and images
def test_trimap_to_mask_colours():
    rgb = np.array([[[128, 0, 0], [0, 0, 0], [0, 128, 0]],
                    [[128, 128, 0], [0, 0, 128], [128, 0, 128]]], dtype=np.uint8)
    assert trimap_to_mask(rgb).tolist() == [[1, 255, 0], [0, 0, 0]]
    assert trimap_to_mask(rgb, "background").tolist() == [[1, 0, 0], [0, 0, 0]]
    with pytest.raises(UsageError):
        trimap_to_mask(rgb, "flower")


def test_mask_values_after_resize_and_band_handling(tree, ready):
    masks = torch.stack([ready.train_set[i][1] for i in range(len(ready.train_set))])
    assert masks.dtype == torch.long and set(masks.unique().tolist()) == {0, 1, 255}
    background = _dm(tree, unlabelled="background")
    background.setup()
    other = background._pairs["train"].masks.long()
    assert set(other.unique().tolist()) == {0, 1}
    assert torch.equal(other, torch.where(masks == 255, 0, masks))


def test_masks_are_nearest_resized(tree, ready):
    """The mask equals PIL NEAREST resizing of the full-size mask (bilinear would blend 255/1/0
    into new values)."""
    number = ready.split_numbers["train"][1]
    rgb = np.asarray(Image.open(tree / "trimaps" / f"image_{number:04d}.png").convert("RGB"))
    expected = np.asarray(Image.fromarray(trimap_to_mask(rgb)).resize((32, 32), Image.NEAREST))
    assert torch.equal(ready._pairs["train"].masks[1], torch.from_numpy(expected.copy()))


def test_any_image_size_and_normalisation(tree):
    dm = _dm(tree, image_size=37, batch_size=4)
    dm.setup()
    sizes = {Image.open(tree / "jpg" / f"image_{n:04d}.jpg").size for n in dm.split_numbers["train"]}
    assert len(sizes) > 1  # the fixture really has varying sizes
    image, mask = dm.train_set[0]
    assert image.shape == (3, 37, 37) and image.dtype == torch.float32 and mask.shape == (37, 37)
    raw = dm._pairs["train"].images[0].float() / 255
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    assert torch.allclose(image, (raw - mean) / std)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 37, 37) and masks.dtype == torch.long


def test_loaders_shuffle_only_train(ready):
    assert isinstance(ready.train_dataloader().sampler, RandomSampler)
    assert isinstance(ready.val_dataloader().sampler, SequentialSampler)
    assert isinstance(ready.test_dataloader().sampler, SequentialSampler)


def test_augment_flips_image_and_mask_together(tree):
    dm = _dm(tree, augment=True)
    dm.setup()
    pairs = dm._pairs["train"]
    plain = (pairs.normalise(pairs.images[0]), pairs.masks[0].long())
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        image, mask = dm.train_set[0]
        flipped = torch.equal(image, plain[0].flip(-1))
        assert torch.equal(mask, plain[1].flip(-1) if flipped else plain[1])
        assert flipped or torch.equal(image, plain[0])
        seen.add(flipped)
    assert seen == {True, False}
    assert not dm.val_set.flip and not dm.test_set.flip
    assert dm.cache_features(lambda x: x, "cpu") is False


def test_val_samples_are_the_first_val_items(ready):
    images, masks, normalised = ready.val_samples(2)
    again = ready.val_samples(2)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert torch.equal(images, again[0]) and torch.equal(normalised, again[2])
    first_image, first_mask = ready.val_set[0]
    assert torch.allclose(normalised[0], first_image) and torch.equal(masks[0], first_mask)


# ---------------------------------------------------------------- feature cache
def test_cache_features_serves_features(tree):
    dm = _dm(tree, batch_size=2)
    dm.setup()
    test_set = dm.test_set
    calls = []

    def pool(x):  # a stand-in trunk: (N,3,32,32) -> (N,3,4,4)
        calls.append(len(x))
        return torch.nn.functional.avg_pool2d(x, 8)

    assert dm.cache_features(pool, "cpu", batch_size=4, identity={"trunk": "pool"})
    assert sum(calls) == 6 + 3 and max(calls) <= 4
    assert isinstance(dm.train_set, FeatureDataset) and dm.test_set is test_set
    features, mask = dm.train_set[0]
    assert features.dtype == torch.float32 and features.shape == (3, 4, 4) and mask.dtype == torch.long
    expected = torch.nn.functional.avg_pool2d(dm._pairs["train"].normalise(dm._pairs["train"].images[:1]), 8)[0]
    assert torch.allclose(features, expected, atol=1e-6)
    assert dm.feature_cache_bytes == 9 * 3 * 4 * 4 * 4  # 9 images, float32
    assert dm.feature_cache_location == "memory, float32, device cpu"
    batch = next(iter(dm.val_dataloader()))
    assert batch[0].shape == (2, 3, 4, 4) and batch[1].shape == (2, 32, 32)
    dm.setup()  # idempotent: the cache stays
    assert isinstance(dm.train_set, FeatureDataset)
    assert dm.cache_features(pool, "cpu", identity={"trunk": "pool"}) and sum(calls) == 9  # same identity: kept


# ---------------------------------------------------------------- files: errors, download, extraction
def test_missing_or_unreadable_files_are_named(tree, tmp_path):
    root = _copy(tree, tmp_path)
    number = trimap_numbers(3, 8, 2)[2]
    (root / "jpg" / f"image_{number:04d}.jpg").unlink()
    with pytest.raises(DataError, match=f"image_{number:04d}.jpg is missing"):
        _dm(root).setup()
    (root / "jpg" / f"image_{number:04d}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image .*image_{number:04d}.jpg"):
        _dm(root).setup()
    shutil.copy(tree / "jpg" / f"image_{number:04d}.jpg", root / "jpg")
    (root / "trimaps" / f"image_{number:04d}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=f"cannot read trimap .*image_{number:04d}.png"):
        _dm(root).setup()


def test_offline_without_images_names_archive_url_and_folder(tmp_path):
    with pytest.raises(DataError) as info:
        _dm(tmp_path / "empty").prepare_data()
    message = str(info.value)
    for part in ("17flowers.tgz", ox.URL + "17flowers.tgz", "trimaps.tgz", str(tmp_path / "empty")):
        assert part in message


def test_download_and_extract_from_file_url(tmp_path):
    server = write_oxford17_archives(tmp_path / "server", n_classes=2, per_class=4)
    md5 = hashlib.md5((server / "17flowers.tgz").read_bytes()).hexdigest()
    dm = Oxford17(tmp_path / "data", image_size=16, base_url=server.as_uri(),
                  checksums={"17flowers.tgz": md5, "datasplits.mat": None})
    dm.prepare_data()
    dm.setup()
    assert (tmp_path / "data" / "jpg" / "image_0001.jpg").is_file()
    assert sum(map(len, dm.split_numbers.values())) == 8
    assert dm.source["jpg"]["md5"] == f"checked ({md5})"
    assert dm.source["trimaps"]["md5"] == "no md5 known"
    assert dm.source["jpg"]["extracted"].startswith("ok: 8 files")
    assert dm.source["datasplits.mat"]["origin"].startswith("downloaded")
    assert not list((tmp_path / "data").glob("*.part"))


def test_md5_mismatch_moves_the_download_aside(tmp_path):
    server = write_oxford17_archives(tmp_path / "server", n_classes=1, per_class=2)
    dm = Oxford17(tmp_path / "data", base_url=server.as_uri())  # the official md5: cannot match
    bad = tmp_path / "data" / "17flowers.tgz.bad-md5"
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    assert str(tmp_path / "data" / "17flowers.tgz") in str(info.value) and str(bad) in str(info.value)
    assert bad.is_file() and not (tmp_path / "data" / "17flowers.tgz").exists()


def test_local_archives_in_read_only_dir_extract_to_cache(tmp_path, monkeypatch):
    server = write_oxford17_archives(tmp_path / "readonly", n_classes=1, per_class=4, with_splits=False)
    real_writable = download.is_writable  # chmod does not stop root: pretend the folder is read-only
    monkeypatch.setattr(download, "is_writable", lambda folder: Path(folder).resolve() != server.resolve()
                        and real_writable(folder))
    dm = _dm(server, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="datasplits.mat unavailable"):
        dm.setup()
    assert dm.jpg_dir == tmp_path / "cache" / "jpg" and not (server / "jpg").exists()
    assert dm.source["jpg"]["origin"] == f"found {server / '17flowers.tgz'}"
    assert "missing" in dm.source["datasplits.mat"] and dm.split_source.startswith("generated")
    again = _dm(server, cache_dir=tmp_path / "cache")
    again.prepare_data()  # the earlier extraction is found in the cache
    assert again.source["jpg"]["origin"] == f"folder {tmp_path / 'cache' / 'jpg'}"


def test_corrupt_archive_is_a_data_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "17flowers.tgz").write_bytes(b"truncated")
    with pytest.raises(DataError, match="17flowers.tgz could not be extracted"):
        _dm(tmp_path / "data").prepare_data()


def test_bad_arguments_are_usage_errors(tmp_path):
    for kwargs in ({"split": 4}, {"unlabelled": "x"}, {"image_size": 0}):
        with pytest.raises(UsageError):
            Oxford17(tmp_path, **kwargs)


# ---------------------------------------------------------------- the real copy
@pytest.mark.integration
def test_real_oxford17_counts_masks_and_splits():
    if not (REAL / "trimaps").is_dir():
        pytest.skip(f"real data not found at {REAL}")
    dm = Oxford17(REAL, image_size=224, download=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    generated = [w for w in caught if "datasplits.mat unavailable" in str(w.message)]
    if (REAL / "datasplits.mat").is_file():  # the official release: its trn1/val1/tst1
        assert dm.split_source == "datasplits.mat trn1/val1/tst1" and not generated
    else:  # a copy without it (as on this machine): a generated split, said so once
        assert dm.split_source.startswith("generated") and len(generated) == 1
    assert dm.split_info["source"] == dm.split_source
    counts = {name: len(v) for name, v in dm.split_numbers.items()}
    pairs = sorted(int(p.stem[6:]) for p in (REAL / "trimaps").glob("image_*.png")
                   if (REAL / "jpg" / f"{p.stem}.jpg").is_file())
    assert len(pairs) > 800  # 846 in this copy, 848 in the official release
    sets = [set(v) for v in dm.split_numbers.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    if not (REAL / "datasplits.mat").is_file():  # generated: every pair, once
        assert sorted(set.union(*sets)) == pairs
    else:  # the mat's lists, restricted to the pairs
        assert set.union(*sets) <= set(pairs)
    masks = torch.cat([dm._pairs[name].masks for name in ("train", "val", "test")])
    assert masks.shape == (sum(counts.values()), 224, 224)
    assert set(masks.unique().tolist()) == {0, 1, 255}
    share = (masks == 1).float().mean(dim=(1, 2))
    assert share.min() > 0.01 and share.max() < 0.75
    assert 0.2 < share.mean() < 0.35  # the README: 27.4% on average
