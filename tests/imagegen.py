"""Images the tests make: photo-like large JPEGs, every odd mode, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, a few shapes and sensor-like noise: closer to a photo than flat colour."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        127 + 100 * np.sin(x / width * rng.uniform(2, 6) + rng.uniform(0, 3)),
        127 + 100 * np.cos(y / height * rng.uniform(2, 6) + rng.uniform(0, 3)),
        127 + 80 * np.sin((x + y) / (width + height) * rng.uniform(3, 9)),
    ], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        base[inside] = rng.uniform(0, 255, size=3)
    base += rng.normal(0, 6, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def save_exif_rotated(img: Image.Image, path: Path, orientation: int) -> None:
    """Save ``img`` as stored by a camera held sideways: pixels rotated, EXIF saying how to undo it."""
    stored = {6: img.transpose(Image.Transpose.ROTATE_90), 8: img.transpose(Image.Transpose.ROTATE_270),
              3: img.transpose(Image.Transpose.ROTATE_180)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A small PNG whose header claims a huge image (palette, 1 bit, all zeros compresses to nothing)."""
    Image.new("1", (width, height)).save(path, "PNG")


def scene_image(i: int) -> Image.Image:
    """The ``i``-th of 40 fixed synth scenes (a captioned picture of shapes), rendered."""
    import random

    from clipseek import synth

    scenes = synth.sample_scenes(40, seed=99)
    return synth.render(scenes[i], random.Random(i))
