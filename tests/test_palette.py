"""Palette loading, nearest-colour classes and palette regeneration (color/)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import color.palette as palette_module
from color.kmeans import main as kmeans_main
from color.palette import DEFAULT_PALETTE_PATH, load_palette, nearest_colour, palette_to_rgb
from tests.fixtures.cifar import write_cifar_folder
from errors import DataError

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
    assert palette.dtype == torch.float32 and palette.shape == (24, 3)
    assert 0 <= palette.min() and palette.max() <= 1
    raw = np.load(DEFAULT_PALETTE_PATH, allow_pickle=False)  # no pickle inside the shipped file
    assert raw.shape == (24, 3) and np.issubdtype(raw.dtype, np.floating)
    assert len(torch.unique(palette, dim=0)) == 24


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


def test_default_file_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.setattr(palette_module, "DEFAULT_PALETTE_PATH", _legacy_file(tmp_path / "default.npy"))
    monkeypatch.setattr(np, "load", _forbid_pickle(np.load))
    with pytest.raises(DataError, match="default.npy"):
        load_palette()
    with pytest.raises(DataError, match="default.npy"):  # the same file named explicitly
        load_palette(tmp_path / "default.npy")


def _forbid_pickle(np_load):
    def load(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "tried to unpickle the default palette"
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


# ----------------------------------------------------------------------------- color.kmeans

@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=6, horse_every=2)
    return root


def test_kmeans_writes_sorted_plain_palette(cifar_root, tmp_path, capsys):
    out = tmp_path / "sub" / "palette.npy"
    assert kmeans_main(["--data-dir", str(cifar_root), "--out", str(out), "--max-pixels", "5000"]) == 0
    assert "24 colours from 5000 pixels" in capsys.readouterr().out
    colours = np.load(out, allow_pickle=False)
    assert colours.dtype == np.float32 and colours.shape == (24, 3)
    luminance = colours @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.all(np.diff(luminance) >= 0)
    assert load_palette(out).shape == (24, 3)
    assert [p.name for p in out.parent.iterdir()] == ["palette.npy"]  # no temporary file left


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
    assert not (tmp_path / "p.npy").exists()


@pytest.mark.integration
def test_shipped_palette_matches_real_horses():
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-horses"
    if not real.is_dir():
        pytest.skip(f"{real} absent")
    from data.cifar import load_batches
    images, labels = load_batches(real / "cifar-10-batches-py", ["data_batch_1"])
    rgb = torch.from_numpy(images[labels == 7][:200]).float() / 255
    palette = load_palette()
    # A k-means palette of these pixels fits them far better than a random palette does.
    fitted = (palette_to_rgb(nearest_colour(rgb, palette), palette) - rgb).pow(2).mean()
    random = torch.rand(24, 3, generator=torch.Generator().manual_seed(0))
    baseline = (palette_to_rgb(nearest_colour(rgb, random), random) - rgb).pow(2).mean()
    assert fitted < 0.5 * baseline
