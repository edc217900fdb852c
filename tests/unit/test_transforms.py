from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseek import transforms as T
from clipseek.collection import Collection
from clipseek.errors import ImageDecodeError, ImageTooLargeError

from ..conftest import need_module
from ..imagegen import photo_like, png_bomb, save_exif_rotated

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
#: Parity with open_clip's own preprocessing (float32 rounding only).
PARITY_TOL = 1e-5
#: JPEG draft decoding (DRAFT_FACTOR=2) vs a full decode, in normalised units (≈ 2/255 of a channel).
DRAFT_MAX_TOL, DRAFT_MEAN_TOL = 0.05, 0.005


def ours(path_or_img, size=224):
    return T.preprocess(T.load_image(path_or_img), size, MEAN, STD)


@pytest.fixture(scope="module")
def reference():
    open_clip = need_module("open_clip")

    def make(size):
        return open_clip.image_transform(size, is_train=False, mean=MEAN, std=STD, resize_mode="shortest",
                                         interpolation="bicubic")
    return make


@pytest.mark.torch
def test_parity_with_open_clip_on_flickr8k(flickr, reference):
    transform = reference(224)
    images = sorted((flickr / "images").glob("*.jpg"))[::20]
    assert len(images) > 300
    worst = max(float(np.abs(ours(p) - transform(Image.open(p)).numpy()).max()) for p in images)
    assert worst <= PARITY_TOL


@pytest.mark.torch
@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (333, 1000), (225, 224), (224, 225), (97, 61),
                                  (1001, 1001)])
@pytest.mark.parametrize("model_size", [224, 336])
def test_parity_with_open_clip_on_odd_geometry(size, model_size, reference, tmp_path):
    path = tmp_path / "img.png"
    photo_like(*size, seed=size[0]).save(path)
    expected = reference(model_size)(Image.open(path)).numpy()
    got = ours(path, model_size)
    assert got.shape == expected.shape == (3, model_size, model_size)
    assert float(np.abs(got - expected).max()) <= PARITY_TOL


def test_draft_decode_is_within_measured_tolerance(tmp_path):
    path = tmp_path / "big.jpg"
    photo_like(4000, 3000, seed=3).save(path, quality=90)
    full = T.preprocess(T.load_image(path), 224, MEAN, STD)
    draft_img = T.load_image(path, draft_size=224)
    assert min(draft_img.size) >= 2 * 224 and draft_img.size[0] < 4000  # really drafted, not too far
    diff = np.abs(T.preprocess(draft_img, 224, MEAN, STD) - full)
    assert diff.max() <= DRAFT_MAX_TOL and diff.mean() <= DRAFT_MEAN_TOL


def test_small_jpeg_is_not_drafted(tmp_path):
    path = tmp_path / "small.jpg"
    photo_like(500, 400).save(path)
    assert T.load_image(path, draft_size=224).size == (500, 400)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_gives_upright_image(orientation, tmp_path):
    upright = Image.new("RGB", (60, 40), "white")
    upright.paste((255, 0, 0), (0, 0, 20, 10))  # red mark top-left
    path = tmp_path / f"rot{orientation}.jpg"
    save_exif_rotated(upright, path, orientation)
    with Image.open(path) as raw:
        assert raw.size == ((40, 60) if orientation in (6, 8) else (60, 40))
    loaded = T.load_image(path)
    assert loaded.size == (60, 40)
    r, g, b = loaded.getpixel((5, 3))
    assert r > 200 and g < 60 and b < 60


def test_modes_become_sensible_rgb(tmp_path):
    cases = {
        "rgba.png": (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),  # transparent → white
        "la.png": (Image.new("LA", (8, 8), (0, 255)), (0, 0, 0)),
        "one.png": (Image.new("1", (8, 8), 1), (255, 255, 255)),
        "cmyk.jpg": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
        "i16.png": (Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),
    }
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pal.info["transparency"] = 0
    cases["pal.png"] = (pal, (255, 255, 255))
    for name, (img, expected) in cases.items():
        path = tmp_path / name
        img.save(path)
        loaded = T.load_image(path)
        assert loaded.mode == "RGB", name
        got = loaded.getpixel((4, 4))
        assert all(abs(a - b) <= 3 for a, b in zip(got, expected)), (name, got)


def test_16_bit_mid_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(path)
    assert abs(T.load_image(path).getpixel((0, 0))[0] - 128) <= 1


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, b = T.load_image(path).getpixel((8, 8))
    assert r > 200 and b < 60


def test_bad_files_raise_typed_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    good = tmp_path / "good.jpg"
    photo_like(300, 200).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:1500])
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    expectations = {empty: "0 bytes", text: "not an image", truncated: "truncated", folder: "directory",
                    tmp_path / "gone.jpg": "not found"}
    for path, words in expectations.items():
        with pytest.raises(ImageDecodeError) as info:
            T.load_image(path)
        assert str(path) in str(info.value) and words in str(info.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    png_bomb(path)
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageTooLargeError) as info:
        T.load_image(path, max_pixels=50_000_000)
    assert info.value.pixels == 900_000_000 and "bomb.png" in str(info.value)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageTooLargeError):
        T.load_image(small, max_pixels=9_999)


def test_unreadable_file_and_collection_name_the_file(tmp_path):
    """Permission problems, as a user meets them: the image and the collection are named, no traceback. Root
    reads any file, so as root (CI) the commands run as the unprivileged user 'nobody' (setpriv)."""
    base = Path(tempfile.mkdtemp(prefix="clipseek-perm-"))  # outside pytest's root-only tmp folders
    try:
        base.chmod(0o755)
        photos = base / "photos"
        photos.mkdir()
        secret = photos / "secret.jpg"
        photo_like(50, 50).save(secret)
        secret.chmod(0)
        locked = base / "locked"
        Collection.create(locked).close()
        for path in [locked, *locked.iterdir()]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        code = ("import sys\nfrom clipseek import transforms as T\nfrom clipseek.errors import ImageDecodeError\n"
                "try:\n    T.load_image(sys.argv[1])\nexcept ImageDecodeError as exc:\n    print(exc)\n")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        env = dict(os.environ, HOME=str(base), CLIPSEEK_HOME=str(base / "home"), CLIPSEEK_CACHE=str(base / "cache"))
        decoded = subprocess.run([*as_user, sys.executable, "-c", code, str(secret)], capture_output=True,
                                 text=True, env=env)
        assert "secret.jpg" in decoded.stdout and "permission denied" in decoded.stdout, decoded
        indexed = subprocess.run([*as_user, sys.executable, "-m", "clipseek.cli", "index", str(photos),
                                  "--collection", str(locked), "--model", "tiny"], capture_output=True, text=True,
                                 env=env)
        assert indexed.returncode == 1 and "Traceback" not in indexed.stderr, indexed.stderr
        assert str(locked) in indexed.stderr and "permission" in indexed.stderr.lower(), indexed.stderr
    finally:
        for path in base.rglob("*"):
            path.chmod(0o700)
        shutil.rmtree(base)


def test_resized_size_matches_torchvision_rule():
    assert T.resized_size(4000, 3000, 224) == (298, 224)
    assert T.resized_size(333, 1000, 224) == (224, 672)
    assert T.resized_size(97, 61, 224) == (356, 224)
