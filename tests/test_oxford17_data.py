"""Oxford17 data module on tiny fixture trees (and on the real copy in ../shared/data when there)."""

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

import data.download as download
import data.oxford17 as ox
from data.batching import EpochShuffle
from data.oxford17 import Oxford17, generated_split, normalise, preprocess, trimap_to_mask
from errors import DataError, UsageError
from tests.fixtures.oxford17 import image_numbers, trimap_numbers, write_oxford17, write_oxford17_archives

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
OFFICIAL = "official: datasplits.mat trn1/val1/tst1"
GENERATED_OFFLINE = "generated: stratified by class 50/25/25, rng seed 1"


def test_counts_follow_datasplits_mat_restricted_to_trimaps(tree, ready):
    mat = scipy.io.loadmat(str(tree / "datasplits.mat"))
    with_trimap = set(trimap_numbers(3, 8, 2))
    for name, key in (("train", "trn1"), ("val", "val1"), ("test", "tst1")):
        expected = sorted(set(mat[key].ravel().astype(int)) & with_trimap)
        assert ready.split_numbers[name] == expected
    assert [len(ready.train_set), len(ready.val_set), len(ready.test_set)] == [6, 3, 3]
    assert ready.split_source == OFFICIAL
    assert ready.splits() == ready.split_numbers  # from the file names alone, the same lists


def test_images_without_trimaps_are_excluded_and_splits_disjoint(ready):
    used = [n for name in ("train", "val", "test") for n in ready.split_numbers[name]]
    assert len(used) == len(set(used)) == 12
    assert sorted(used) == trimap_numbers(3, 8, 2)
    assert len(image_numbers(3, 8)) == 24


def test_split_k_selects_the_mats_lists(tree):
    dm = _dm(tree, split=2)
    dm.setup()
    mat = scipy.io.loadmat(str(tree / "datasplits.mat"))
    assert dm.split_numbers["train"] == sorted(set(mat["trn2"].ravel().astype(int)) & set(trimap_numbers(3, 8, 2)))
    assert dm.split_source == "official: datasplits.mat trn2/val2/tst2"


def test_the_split_used_is_announced_in_one_line_for_both_sources(tree, tmp_path, capsys):
    """One printed line names the split (official datasplits.mat, or generated and why); the split_info
    kept in every summary (and in the run's settings) tells the two apart."""
    official = _dm(tree)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a line, not a warning
        official.setup()
    assert capsys.readouterr().out == f"Oxford17 split 1: {OFFICIAL}; 6 train / 3 val / 3 test images\n"
    root = _copy(tree, tmp_path, splits=False)
    generated = _dm(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generated.setup()
    assert capsys.readouterr().out == (f"Oxford17 split 1: {GENERATED_OFFLINE} (datasplits.mat not found and "
                                       "download=False); 6 train / 3 val / 3 test images\n")
    failed = _dm(root, download=True, base_url=(tmp_path / "no-server").as_uri())  # the download of the mat fails
    failed.setup()
    line = capsys.readouterr().out
    assert line.startswith(f"Oxford17 split 1: {GENERATED_OFFLINE} (datasplits.mat download failed: ")
    assert line.endswith("); 6 train / 3 val / 3 test images\n") and line.count("\n") == 1
    # why the file is missing is no setting: both give the same split, so their runs are the same settings
    assert failed.split_info == generated.split_info
    assert official.split_info == {"source": OFFICIAL, "hash": ox.split_hash(official.split_numbers)}
    assert generated.split_info == {"source": GENERATED_OFFLINE, "hash": ox.split_hash(generated.split_numbers)}
    assert official.split_info["hash"] != generated.split_info["hash"]
    assert official.settings()["split"] == {"k": 1, **official.split_info}
    assert official.settings()["split"] != generated.settings()["split"]
    official.setup()  # once: a second setup says nothing
    assert capsys.readouterr().out == ""


def test_generated_split_without_mat_is_deterministic_and_stratified(tree, tmp_path):
    root = _copy(tree, tmp_path, splits=False)
    first, again = _dm(root), _dm(root)
    first.setup()
    again.setup()
    assert first.split_numbers == again.split_numbers
    assert first.split_numbers == generated_split(trimap_numbers(3, 8, 2), 1)
    assert first.split_source == GENERATED_OFFLINE
    numbers = list(range(1, 81)) + list(range(161, 201))  # classes 0 (80 images) and 2 (40)
    split = generated_split(numbers, seed=5)
    for c, m in ((0, 80), (2, 40)):
        counts = [sum(1 for n in split[s] if (n - 1) // 80 == c) for s in ("train", "val", "test")]
        assert counts == [m // 2, m // 4, m // 4]
    odd = generated_split(list(range(1, 8)), seed=0)  # 7 images of class 0: ceil(7/2) = 4, then 1 and 2
    assert [len(odd[s]) for s in ("train", "val", "test")] == [4, 1, 2]
    assert sorted(sum(split.values(), [])) == numbers
    assert generated_split(numbers, seed=6) != split  # the rng seed (= --split) varies the split
    assert generated_split(numbers, seed=5) == split


def test_generated_split_depends_on_split_not_seed(tree, tmp_path):
    root = _copy(tree, tmp_path, splits=False)
    made = {}
    for seed, split in ((0, 1), (123, 1), (0, 2), (123, 2)):
        dm = _dm(root, seed=seed, split=split)
        dm.setup()
        made[seed, split] = (dm.split_numbers, dm.split_info)
    assert made[0, 1] == made[123, 1] and made[0, 2] == made[123, 2]  # --seed changes nothing
    assert made[0, 1][0] != made[0, 2][0]  # --split does
    info1, info2 = made[0, 1][1], made[0, 2][1]
    assert info1["source"] == GENERATED_OFFLINE
    assert info1["hash"] == ox.split_hash(made[0, 1][0]) != info2["hash"]


def test_split_hash_is_sha256_of_the_sorted_lists(ready):
    lists = {name: sorted(ready.split_numbers[name]) for name in ("train", "val", "test")}
    expected = hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()[:16]
    assert ox.split_hash(ready.split_numbers) == expected
    moved = {**ready.split_numbers, "val": ready.split_numbers["test"], "test": ready.split_numbers["val"]}
    assert ox.split_hash(moved) != expected  # the hash knows which list an image is in


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
    assert isinstance(ready.train_dataloader().sampler, EpochShuffle)
    assert isinstance(ready.val_dataloader().sampler, SequentialSampler)
    assert isinstance(ready.test_dataloader().sampler, SequentialSampler)


def test_augment_flips_image_and_mask_together(tree):
    dm = _dm(tree, augment=True)
    dm.setup()
    pairs = dm._pairs["train"]
    plain = (normalise(pairs.images[0], pairs.mean, pairs.std), pairs.masks[0].long())
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


def test_images_and_masks_of_each_split_as_decoded(tree, ready):
    for name in ("train", "val", "test"):
        images, masks = ready.images(name), ready.split_masks(name)
        assert images.dtype == torch.uint8 and images.shape == (len(ready.split_numbers[name]), 3, 32, 32)
        assert masks.dtype == torch.uint8 and masks.shape == (len(ready.split_numbers[name]), 32, 32)
        number = ready.split_numbers[name][0]
        with Image.open(tree / "jpg" / f"image_{number:04d}.jpg") as im:
            assert torch.equal(images[0], preprocess(np.asarray(im.convert("RGB")), 32))


def test_preprocess_is_a_bilinear_resize_and_normalise_scales_then_standardises():
    flat = np.empty((5, 7, 3), np.uint8)
    flat[...] = (10, 20, 30)  # a uniform image stays uniform at any size: channels first, values kept
    out = preprocess(flat, 3)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 3)
    assert [out[c].unique().tolist() for c in range(3)] == [[10], [20], [30]]
    rgb8 = np.zeros((2, 4, 3), np.uint8)
    rgb8[:, 2:] = 200  # left half black, right half 200: (H, W) = (2, 4)
    expected = np.asarray(Image.fromarray(rgb8).resize((2, 2), Image.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(preprocess(rgb8, 2), torch.from_numpy(expected.copy()))  # Pillow's bilinear, antialiased
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1)
    y = normalise(x, (0.5, 0.1, 0.0), (0.5, 0.2, 2.0))
    assert torch.allclose(y.flatten(), torch.tensor([(0 - 0.5) / 0.5, (0.2 - 0.1) / 0.2, 0.5]), atol=1e-6)


def test_val_sample_indices_spread_over_the_classes(ready):
    classes = [ox.class_of(n) for n in ready.split_numbers["val"]]
    assert classes == [0, 1, 2]  # one val image with a trimap per class in the fixture
    assert ready.val_sample_indices(1) == [0] and ready.val_sample_indices(2) == [0, 1]
    assert ready.val_sample_indices(3) == [0, 1, 2]
    assert ready.val_sample_indices(5) == [0, 1, 2]


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
    data_dir = tmp_path / "typo" / "empty"
    with pytest.raises(DataError) as info:
        _dm(data_dir).prepare_data()
    message = str(info.value)
    for part in ("17flowers.tgz", ox.URL + "17flowers.tgz", "trimaps.tgz", str(data_dir)):
        assert part in message
    assert "\n" not in message and not (tmp_path / "typo").exists()


def test_failed_download_into_a_mistyped_folder_leaves_no_folder(tmp_path):
    data_dir = tmp_path / "typo" / "datasets" / "oxford17"
    dm = Oxford17(data_dir, base_url=(tmp_path / "no-server").as_uri(), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert message.startswith("Oxford17 is missing 17flowers.tgz (") and "download failed" in message
    assert str(data_dir.absolute()) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no typo/, no cache folder


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


def test_placed_files_with_another_md5_are_used_with_a_warning(tmp_path):
    """Files the user put there are theirs: a wrong md5 warns (once per file) and is recorded, never moved."""
    data = write_oxford17_archives(tmp_path / "data", n_classes=1, per_class=4)
    dm = Oxford17(data, image_size=16, download=False)  # the official md5s: the fixture's files differ
    with pytest.warns(UserWarning) as caught:
        dm.prepare_data()
    messages = [str(w.message) for w in caught]
    for name in ("17flowers.tgz", "datasplits.mat"):
        got = hashlib.md5((data / name).read_bytes()).hexdigest()
        assert f"Oxford17: {data / name} has md5 {got}, not the official {ox.MD5[name]}; using it as given" in messages
    assert len(messages) == 2  # trimaps.tgz has no md5 to compare
    got = hashlib.md5((data / "17flowers.tgz").read_bytes()).hexdigest()
    assert dm.source["jpg"]["md5"] == f"differs from the official {ox.MD5['17flowers.tgz']} (got {got}); used as given"
    assert dm.source["trimaps"]["md5"] == "no md5 known"
    assert dm.source["jpg"]["extracted"].startswith("ok: 4 files") and dm.splits_path == data / "datasplits.mat"
    assert not list(data.glob("*.bad-md5")) and (data / "17flowers.tgz").is_file()


def test_local_archives_in_read_only_dir_extract_to_cache(tmp_path, monkeypatch):
    server = write_oxford17_archives(tmp_path / "readonly", n_classes=1, per_class=4, with_splits=False)
    real_writable = download.is_writable  # chmod does not stop root: pretend the folder is read-only
    monkeypatch.setattr(download, "is_writable", lambda folder: Path(folder).resolve() != server.resolve()
                        and real_writable(folder))
    dm = _dm(server, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="readonly is not writable; downloading / extracting the Oxford17 files "
                                         "in the cache folder"):
        dm.setup()
    assert dm.jpg_dir == tmp_path / "cache" / "jpg" and not (server / "jpg").exists()
    assert sorted(p.name for p in server.iterdir()) == ["17flowers.tgz", "trimaps.tgz"]  # nothing written there
    assert dm.source["jpg"]["origin"] == f"found {server / '17flowers.tgz'}"
    assert dm.source["datasplits.mat"]["missing"] == "not found and download=False"
    assert dm.split_source == GENERATED_OFFLINE
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
def test_real_oxford17_counts_masks_and_splits(shared_oxford17, capsys):
    """The copy in ../shared/data/oxford17 (its README: 846 image/trimap pairs, 256x256, no datasplits.mat;
    the flower covers 27.4% of a label map on average, 1.6% at least, 73.1% at most)."""
    assert not (shared_oxford17 / "datasplits.mat").exists()
    dm = Oxford17(shared_oxford17, image_size=256, download=False)
    dm.setup()
    # counted here from the file names: pairs per class, then the documented rule ceil(m/2) / half the rest
    pairs = sorted(int(p.stem[6:]) for p in (shared_oxford17 / "trimaps").glob("image_*.png")
                   if (shared_oxford17 / "jpg" / f"{p.stem}.jpg").is_file())
    per_class = {}
    for n in pairs:
        per_class[(n - 1) // 80] = per_class.get((n - 1) // 80, 0) + 1
    rule = {c: ((m + 1) // 2, (m - (m + 1) // 2) // 2) for c, m in per_class.items()}  # (train, val) per class
    rule = {c: {"train": t, "val": v, "test": per_class[c] - t - v} for c, (t, v) in rule.items()}
    total = {name: sum(r[name] for r in rule.values()) for name in ("train", "val", "test")}
    assert (len(pairs), len(per_class), total) == (846, 16, {"train": 428, "val": 205, "test": 213})
    assert {name: len(v) for name, v in dm.split_numbers.items()} == total
    assert capsys.readouterr().out == (f"Oxford17 split 1: {GENERATED_OFFLINE} (datasplits.mat not found and "
                                       "download=False); 428 train / 205 val / 213 test images\n")
    assert sorted(n for v in dm.split_numbers.values() for n in v) == pairs  # every pair, once
    for name, members in dm.split_numbers.items():
        assert {c: sum(1 for n in members if (n - 1) // 80 == c) for c in rule} == {c: r[name] for c, r in rule.items()}
    # masks decoded here without the module: 256x256 already, so no resize; flower (128, 0, 0) -> 1, black -> 255
    masks = torch.cat([dm.split_masks(name) for name in ("train", "val", "test")])
    order = [n for name in ("train", "val", "test") for n in dm.split_numbers[name]]
    assert masks.shape == (846, 256, 256)
    flower = np.zeros(846)
    for i, n in enumerate(order):
        rgb = np.asarray(Image.open(shared_oxford17 / "trimaps" / f"image_{n:04d}.png").convert("RGB")).astype(int)
        code = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
        expected = np.where(code == 128 * 65536, 1, np.where(code == 0, 255, 0))
        assert np.array_equal(masks[i].numpy(), expected), n
        flower[i] = (code == 128 * 65536).mean()
    shares = (masks == 1).double().mean(dim=(1, 2)).numpy()
    assert np.array_equal(shares, flower)
    assert (round(100 * shares.mean(), 1), round(100 * shares.min(), 1), round(100 * shares.max(), 1)) == \
        (27.4, 1.6, 73.1)
