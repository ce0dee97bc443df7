"""The palette (color/palette.py): loading, nearest-colour classes, decoding logits (argmax and the annealed
mean, reporting/decodings.py); and its regeneration by k-means (data/palette_kmeans.py)."""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import color.palette as palette_module
from color.palette import DEFAULT_PALETTE_PATH, annealed_probabilities, load_palette, nearest_colour, palette_to_rgb
from data.palette_kmeans import fit_palette, horse_pixels
from data.palette_kmeans import main as kmeans_main
from errors import DataError
from reporting.decodings import decode
from tests.fixtures.cifar import write_batch, write_cifar_folder

CENTRES = np.linspace(0.0, 1.0, 3 * 6).reshape(6, 3)


def _legacy_file(path, centres=CENTRES):
    """The homework's layout: an object array [centres, distortion], saved with pickle."""
    legacy = np.empty(2, dtype=object)
    legacy[0], legacy[1] = centres, 123.4
    np.save(path, legacy, allow_pickle=True)
    return path


# ----------------------------------------------------------------------------- load_palette

def test_default_palette_is_plain_24_rgb_colours():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        palette = load_palette()
    raw = np.load(DEFAULT_PALETTE_PATH, allow_pickle=False)  # no pickle inside the shipped file
    assert raw.dtype == np.float32 and raw.shape == (24, 3)
    assert palette.dtype == torch.float32 and torch.equal(palette, torch.from_numpy(raw))
    # the file the committed results/colorization summaries were trained with (their settings' palette hash)
    assert hashlib.sha256(raw.tobytes()).hexdigest()[:16] == "2d77b515065a8cbd"
    luminance = raw.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luminance) > 0) and len(torch.unique(palette, dim=0)) == 24  # sorted, distinct


def test_explicit_plain_file_loads_without_warning(tmp_path):
    np.save(tmp_path / "p.npy", CENTRES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        palette = load_palette(tmp_path / "p.npy")
    assert torch.allclose(palette, torch.tensor(CENTRES, dtype=torch.float32))


def test_legacy_object_array_loads_with_one_warning(tmp_path):
    path = _legacy_file(tmp_path / "legacy.npy")
    with pytest.warns(UserWarning, match="unpickles") as record:
        palette = load_palette(str(path))
    assert len(record) == 1 and str(path) in str(record[0].message)
    assert torch.allclose(palette, torch.tensor(CENTRES, dtype=torch.float32))


def test_pickled_dict_is_refused_from_its_header_without_claiming_the_homework_layout(tmp_path, monkeypatch):
    path = tmp_path / "dict.npy"
    np.save(path, {"centres": CENTRES, "distortion": 1.0}, allow_pickle=True)
    monkeypatch.setattr(np, "load", _forbid_pickle(np.load))  # never unpickled
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning first that it is the homework's file
        with pytest.raises(DataError) as info:
            load_palette(path)
    message = str(info.value)
    assert message.startswith(f"palette file {path} holds pickled objects of shape (), not the homework's "
                              f"[centres, distortion] layout")
    assert "refused without unpickling it" in message and "\n" not in message


def test_object_array_of_two_whose_centres_are_not_numbers(tmp_path):
    path = _legacy_file(tmp_path / "odd.npy", centres={"not": "centres"})
    with pytest.warns(UserWarning, match="unpickles"), pytest.raises(DataError, match="dtype object"):
        load_palette(path)


def test_default_file_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setattr(palette_module, "DEFAULT_PALETTE_PATH", _legacy_file(tmp_path / "default.npy"))
    monkeypatch.setattr(np, "load", _forbid_pickle(np.load))
    with pytest.raises(DataError, match="default.npy"):
        load_palette()
    with pytest.raises(DataError, match="default.npy"):  # the same file named explicitly
        load_palette(tmp_path / "default.npy")


def _forbid_pickle(np_load):
    def load(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "tried to unpickle the palette"
        return np_load(*args, **kwargs)
    return load


@pytest.mark.parametrize("array, match", [
    (np.zeros((24, 4)), r"shape \(24, 4\)"),
    (np.zeros((1, 3)), r"shape \(1, 3\)"),
    (np.zeros(72), r"shape \(72,\)"),
    (np.array([["a", "b", "c"], ["d", "e", "f"]]), "dtype"),
    (np.ones((4, 3), dtype=bool), "dtype"),
    (np.full((4, 3), 200.0), "divide by 255"),
    (np.full((4, 3), -0.5), r"\[-0.5, -0.5\]"),
    (np.array([[0.1, np.nan, 0.2], [0.1, 0.2, 0.3]]), "NaN"),
])
def test_malformed_palette_raises_data_error_naming_file(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=match) as info:
        load_palette(path)
    assert str(path) in str(info.value)


def test_missing_truncated_and_non_npy_files(tmp_path):
    np.save(tmp_path / "good.npy", CENTRES)
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes((tmp_path / "good.npy").read_bytes()[:140])
    (tmp_path / "text.npy").write_text("0.1 0.2 0.3\n")
    np.savez(tmp_path / "arrays.npz", palette=CENTRES)
    for name, match in [("missing.npy", "not found"), ("truncated.npy", "could not be read"),
                        ("text.npy", "not a .npy"), ("arrays.npz", "not a .npy")]:
        with pytest.raises(DataError, match=match) as info:
            load_palette(tmp_path / name)
        assert name in str(info.value)


# ----------------------------------------------------------------------------- nearest_colour

def _brute_force(rgb, palette, n, i, j):
    pixel = [float(rgb[n, c, i, j]) for c in range(3)]
    dists = [sum((pixel[c] - float(colour[c])) ** 2 for c in range(3)) for colour in palette]
    return dists.index(min(dists))


def test_nearest_colour_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    rgb, palette = torch.rand(5, 3, 7, 6, generator=gen), torch.rand(10, 3, generator=gen)
    classes = nearest_colour(rgb, palette, chunk=2)
    assert classes.dtype == torch.long and classes.shape == (5, 7, 6)
    for n, i, j in [(0, 0, 0), (1, 3, 2), (2, 6, 5), (3, 1, 4), (4, 5, 0)]:
        assert classes[n, i, j] == _brute_force(rgb, palette, n, i, j)
    assert torch.equal(classes, nearest_colour(rgb, palette, chunk=100))


def test_ties_go_to_lowest_index():
    # Exactly representable values, so the tied distances are exactly equal.
    palette = torch.tensor([[0.25] * 3, [0.0] * 3, [0.5] * 3, [0.0] * 3])
    rgb = torch.tensor([0.0, 0.375, 0.125, 0.5]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    # 0.0: colours 1 and 3 are equal; 0.375: between 0 and 2; 0.125: between 0 and 1.
    assert nearest_colour(rgb, palette).tolist() == [[[1, 0, 0, 2]]]


def test_nearest_colour_rejects_wrong_shape():
    with pytest.raises(ValueError, match="N, 3, H, W"):
        nearest_colour(torch.rand(3, 4, 4), torch.rand(5, 3))


def test_palette_to_rgb_round_trip():
    palette = load_palette()
    indices = torch.randint(0, 24, (3, 5, 4), generator=torch.Generator().manual_seed(1))
    image = palette_to_rgb(indices, palette)
    assert image.shape == (3, 3, 5, 4) and image.dtype == torch.float32
    assert torch.equal(image[2, :, 4, 1], palette[indices[2, 4, 1]])
    assert torch.equal(nearest_colour(image, palette), indices)


# ----------------------------------------------------------------------------- decode

@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(2, 24, 4, 8) * 3


def test_argmax_picks_the_most_likely_palette_colour(logits):
    palette = load_palette()
    rgb = decode(logits, palette, "argmax")
    idx = logits.argmax(1)
    assert rgb.shape == (2, 3, 4, 8)
    assert torch.equal(rgb, palette[idx].permute(0, 3, 1, 2))


def test_temperature_to_zero_gives_argmax(logits):
    palette = load_palette()
    assert torch.allclose(decode(logits, palette, "annealed", 1e-4), decode(logits, palette, "argmax"), atol=1e-5)


def test_temperature_one_gives_the_mean_colour(logits):
    palette = load_palette()
    mean = (torch.softmax(logits, 1)[:, :, None] * palette[None, :, :, None, None]).sum(1)
    assert torch.allclose(decode(logits, palette, "annealed", 1.0), mean, atol=1e-6)


def test_annealed_mean_by_hand_for_two_colours():
    """Logits (0, log 2): softmax (1/3, 2/3); at T = 0.5 f_T = (1, 4) / 5, so black and white give 0.8."""
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    logits = torch.tensor([0.0, float(np.log(2.0))]).view(1, 2, 1, 1)
    assert torch.allclose(annealed_probabilities(logits, 0.5).flatten(), torch.tensor([0.2, 0.8]), atol=1e-7)
    assert torch.allclose(decode(logits, palette, "annealed", 0.5).flatten(), torch.full((3,), 0.8), atol=1e-7)
    assert torch.allclose(decode(logits, palette, "annealed", 1.0).flatten(), torch.full((3,), 2 / 3), atol=1e-7)


def test_bad_temperature_and_method_are_refused(logits):
    palette = load_palette()
    with pytest.raises(ValueError, match="temperature"):
        decode(logits, palette, "annealed", 0)
    with pytest.raises(ValueError, match="argmax"):
        decode(logits, palette, "median")


# ----------------------------------------------------------------------------- data/palette_kmeans.py

# Three exact colours (multiples of 1/255 whose means are exact): what k-means with k = 3 must return.
KNOWN = np.array([[200, 40, 10], [20, 220, 60], [90, 90, 250]], dtype=np.uint8)


def _three_colour_horses(root, n_per_batch=6):
    """A CIFAR folder whose horses' pixels take exactly the colours KNOWN (other classes: pure white,
    which must not reach the palette)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [7 if i % 2 == 0 else 3 for i in range(n_per_batch)]
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        which = rng.integers(0, 3, size=(n_per_batch, 32, 32))
        images = KNOWN[which].transpose(0, 3, 1, 2).copy()  # (N, 3, 32, 32)
        images[[i for i, label in enumerate(labels) if label != 7]] = 255
        write_batch(folder / name, images, labels)
    return root


def test_fit_palette_finds_known_clusters_sorted_by_luminance():
    rng = np.random.default_rng(1)
    pixels = KNOWN[rng.integers(0, 3, size=3000)] / 255.0
    centres = fit_palette(pixels, k=3, seed=0)
    expected = (KNOWN / 255.0).astype(np.float32)
    # luminance 0.299 R + 0.587 G + 0.114 B by hand: red 84.4, blue 108.2, green 141.9 (0..255 units)
    assert centres.dtype == np.float32 and np.allclose(centres, expected[[0, 2, 1]], atol=1e-6)


# Six exact colours listed in decreasing luminance (0..255 units: 230.3, 177.1, 150.0, 105.1, 52.2, 18.0)
SIX = np.array([[250, 230, 180], [240, 160, 100], [150, 150, 150], [20, 130, 200], [120, 20, 40], [10, 10, 80]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_palette_sorts_whatever_order_k_means_finds(seed):
    pixels = np.repeat(SIX / 255.0, 200, axis=0)
    centres = fit_palette(np.random.default_rng(seed).permutation(pixels), k=6, seed=seed)
    assert np.allclose(centres, (SIX[::-1] / 255.0).astype(np.float32), atol=1e-6)


def test_kmeans_main_writes_the_known_colours_of_the_horses_only(tmp_path, capsys):
    root = _three_colour_horses(tmp_path / "data")
    out = tmp_path / "sub" / "palette.npy"
    assert kmeans_main(["--data-dir", str(root), "--out", str(out), "--k", "3"]) == 0
    assert "3 colours from 15360 pixels" in capsys.readouterr().out  # 5 batches x 3 horses x 1024 pixels
    colours = np.load(out, allow_pickle=False)
    assert colours.dtype == np.float32 and colours.shape == (3, 3)
    assert np.allclose(colours, (KNOWN[[0, 2, 1]] / 255.0).astype(np.float32), atol=1e-6)  # no white
    assert torch.equal(load_palette(out), torch.from_numpy(colours))
    assert [p.name for p in out.parent.iterdir()] == ["palette.npy"]  # no temporary file left


def test_horse_pixels_subset_is_seeded(tmp_path):
    root = _three_colour_horses(tmp_path / "data")
    everything = horse_pixels(root)
    assert everything.shape == (15360, 3) and set(map(tuple, (everything * 255).round().astype(int))) == \
        set(map(tuple, KNOWN.astype(int)))
    a, b, c = horse_pixels(root, 1000, seed=0), horse_pixels(root, 1000, seed=0), horse_pixels(root, 1000, seed=1)
    assert a.shape == (1000, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=6, horse_every=2)
    return root


def test_kmeans_is_deterministic_for_a_seed(cifar_root, tmp_path):
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        out = tmp_path / f"{name}.npy"
        assert kmeans_main(["--data-dir", str(cifar_root), "--out", str(out), "--k", "5", "--seed", str(seed),
                            "--max-pixels", "3000"]) == 0
        runs[name] = np.load(out)
    assert runs["a"].shape == (5, 3)
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


def test_kmeans_reports_missing_data(tmp_path, capsys):
    assert kmeans_main(["--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.npy")]) == 1
    assert "error: no CIFAR-10 data in" in capsys.readouterr().err
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "nothing").exists()


@pytest.mark.integration
def test_shipped_palette_matches_real_horses(shared_cifar):
    from data.cifar import load_batches
    images, labels = load_batches(shared_cifar / "cifar-10-batches-py", ["data_batch_1"])
    rgb = torch.from_numpy(images[labels == 7][:200]).float() / 255
    palette = load_palette()
    # A k-means palette of these pixels fits them far better than a random palette does.
    fitted = (palette_to_rgb(nearest_colour(rgb, palette), palette) - rgb).pow(2).mean()
    random = torch.rand(24, 3, generator=torch.Generator().manual_seed(0))
    baseline = (palette_to_rgb(nearest_colour(rgb, random), random) - rgb).pow(2).mean()
    assert fitted < 0.5 * baseline
