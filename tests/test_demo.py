"""demo.py: the local web page. One server runs in a subprocess on a free loopback port with a colourisation
and a segmentation run (tests/test_predict.py `trained`); real images go through the page's API
(gradio_client, as a browser's upload would), and the images that come back are compared pixel for
pixel with test_predict's second implementation. Corrupt uploads get an error message and the server
keeps serving. The offline guard (tests/conftest.py) fails the test if the server or the client tries
to reach anything but loopback (gradio's usage statistics, a share link)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import demo
from tests.clirun import run_main
from tests.conftest import REPO
from tests.fixtures.trained import trained
from tests.test_predict import checkpoint_of, expected_colour, expected_mask, grey_of, photo_folder, read

START_TIMEOUT = 240  # s: importing gradio and torch in a fresh process on 2 loaded cores
# Runs demo.py with host-name lookups other than loopback refused and written to LOG. The offline guard of
# conftest sees connections, but on a machine without DNS a call home (gradio's usage statistics, a share
# link's tunnel) fails at the lookup, before any connection; this catches it there, network or not.
LOOKUP_GUARD = """
import ipaddress, runpy, socket, sys
LOG, _lookup = sys.argv.pop(1), socket.getaddrinfo

def loopback(host):
    host = host.decode() if isinstance(host, bytes) else host
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

def guarded(host, *args, **kwargs):
    if not loopback(host):
        with open(LOG, "a") as f:
            f.write(f"{host}\\n")
        raise socket.gaierror(socket.EAI_NONAME, "the tests refuse lookups of hosts other than loopback")
    return _lookup(host, *args, **kwargs)

socket.getaddrinfo = guarded
sys.argv[0] = "demo.py"
runpy.run_path("demo.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One results/ and logs/ holding the colourisation run and the segmentation run; TORCH_HOME with the
    segmentation run's trunk."""
    root = tmp_path_factory.getbasetemp() / "demo-runs"
    if not root.exists():
        for kind in ("colour", "flowers"):
            source = trained(kind, tmp_path_factory)
            for part in ("results", "logs"):
                shutil.copytree(source / part, root / part, dirs_exist_ok=True)
    return root


def torch_home(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "trained-flowers" / "torch"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc, url):
    deadline = time.time() + START_TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"demo.py exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"demo.py did not answer on {url} within {START_TIMEOUT} s")


def test_without_gradio_it_says_how_to_install(tmp_path):
    (tmp_path / "gradio.py").write_text("raise ModuleNotFoundError(\"No module named 'gradio'\", name='gradio')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]])}
    proc = subprocess.run([sys.executable, "demo.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: the demo needs gradio, which is not installed (No module named 'gradio'); install it with "
        "`pip install -r requirements-demo.txt`"]


def test_bad_flags_are_one_line(capsys):
    for argv, words in [(["--port", "70000"], "--port"), (["--segmentation-checkpoint", "nowhere.ckpt"],
                                                           "--segmentation-checkpoint nowhere.ckpt: no such file")]:
        code, _, err = run_main(demo.main, argv, capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_which_flower_mask(runs, tmp_path, tmp_path_factory, monkeypatch):
    config = demo.DemoConfig(results_dir=str(runs / "results"), logs_dir=str(runs / "logs"))
    monkeypatch.setenv("TORCH_HOME", str(torch_home(tmp_path_factory)))
    module, note = demo.load_segmentation(config)
    best = checkpoint_of(runs, "segmentation", "best")
    assert module is not None and note.startswith("flower mask: DeepLabV3-mobilenet_v3_large (ce loss) from "
                                                  f"{best} (best of run ")
    module, note = demo.load_segmentation(demo.DemoConfig(results_dir=str(runs / "results"),
                                                          logs_dir=str(runs / "logs"), segmentation_checkpoint="none"))
    assert module is None and note == "no flower mask (--segmentation-checkpoint none)"
    module, note = demo.load_segmentation(demo.DemoConfig(results_dir=str(tmp_path), logs_dir=str(tmp_path)))
    assert module is None and note.startswith("no flower mask: no finished segmentation run in ")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # the run's trunk weights are not here
    module, note = demo.load_segmentation(config)
    assert module is None and "needs its trunk's COCO weights" in note and str(tmp_path / "no-weights") in note
    with pytest.raises(demo.UserError, match="--segmentation-checkpoint last: the segmentation checkpoint"):
        demo.load_segmentation(dataclasses_replace(config, segmentation_checkpoint="last"))


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_large_photos_are_shrunk_to_max_side(tmp_path):
    from inference.images import load_image

    pixels = np.zeros((300, 1000, 3), np.uint8)
    pixels[:, 500:] = 200  # left half black, right half grey
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image, shrunk = demo.shrink(load_image(tmp_path / "wide.png"), 100)
    assert shrunk and image.size == (100, 30)
    assert (image.rgb8()[:, :48] == 0).all() and (image.rgb8()[:, 52:] == 200).all()
    same, shrunk = demo.shrink(load_image(tmp_path / "wide.png"), 1000)
    assert not shrunk and same.size == (1000, 300)


def test_the_page_colours_and_masks_a_photo_and_survives_bad_uploads(runs, tmp_path, tmp_path_factory, monkeypatch):
    gradio_client = pytest.importorskip("gradio_client")
    pytest.importorskip("gradio")
    monkeypatch.setenv("TORCH_HOME", str(torch_home(tmp_path_factory)))  # for expected_mask here
    before = checkout_status()
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "TORCH_HOME": str(torch_home(tmp_path_factory))}
    lookups = tmp_path / "lookups.txt"
    proc = subprocess.Popen([sys.executable, "-c", LOOKUP_GUARD, lookups, "--port", str(port), "--results-dir",
                             str(runs / "results"), "--logs-dir", str(runs / "logs")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(proc, url)
        client = gradio_client.Client(url, download_files=str(tmp_path / "downloads"), verbose=False)
        folder, _, bad = photo_folder(tmp_path, n_good=3)
        photo = tmp_path / "photo.png"
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo)
        rgb8 = read(photo)
        *images, note = client.predict(gradio_client.handle_file(str(photo)), api_name="/colourise")
        grey, argmax, annealed, mask = (read(path) for path in images)
        height, width = rgb8.shape[:2]
        assert [im.shape[:2] for im in (grey, argmax, annealed, mask)] == [(height, width)] * 4
        np.testing.assert_array_equal(grey, np.rint(grey_of(rgb8) * np.float32(255)).astype(np.uint8))
        best = checkpoint_of(runs, "colorization", "best")
        np.testing.assert_array_equal(argmax, expected_colour(best, grey_of(rgb8)))
        want = expected_colour(best, grey_of(rgb8), "annealed").astype(int)
        assert np.abs(annealed.astype(int) - want).max() <= 1
        flower = expected_mask(checkpoint_of(runs, "segmentation", "best"), rgb8)
        tinted = np.rint(rgb8 * np.float32(0.5) + np.float32([255, 0, 255]) * np.float32(0.5)).astype(np.uint8)
        np.testing.assert_array_equal(mask, np.where(flower[..., None] == 1, tinted, rgb8))
        for output in (argmax, annealed):
            assert not np.array_equal(output, rgb8)
        assert note == f"photo.png: {width} x {height} pixels; flower: {flower.mean():.1%} of the pixels"

        (tmp_path / "notes.png").write_text("a text file named .png")
        for upload, start, end in [  # the words of --predict (inference/images.py), with the file's own name
                (bad, "image broken.jpg could not be read (", "): it is truncated, corrupt or too large"),
                (tmp_path / "notes.png", "notes.png is not an image file Pillow can read (JPEG, PNG, BMP, TIFF, "
                                         "WebP, ...)", "")]:
            with pytest.raises(gradio_client.exceptions.AppError) as info:  # the message shown on the page
                client.predict(gradio_client.handle_file(str(upload)), api_name="/colourise")
            message = str(info.value)  # between start and end, Pillow's reason, worded differently by version
            assert message.startswith(start) and message.endswith(end) and "\n" not in message, message
        assert proc.poll() is None  # still serving
        again = client.predict(gradio_client.handle_file(str(folder / "holiday" / "img01.jpg")), api_name="/colourise")
        assert read(again[1]).shape[:2] == read(folder / "holiday" / "img01.jpg").shape[:2]
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 2, err
    assert not lookups.exists(), f"demo.py looked up {lookups.read_text()}"  # e.g. api.gradio.app
    assert checkout_status() == before  # nothing written into the checkout (gradio writes .pyi files beside
    # the module of a component subclass: the page defines none)


def checkout_status():
    """`git status --porcelain` of the checkout: untracked and changed files, not the ignored ones."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout

