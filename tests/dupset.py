"""A labelled near-duplicate set made from real photos (Flickr8k): for `clipseek duplicates`' tests and bench.

Each of ``n`` photos is written as itself and, for most, as one or two copies made the ways copies happen: resized,
re-encoded hard, lightly cropped (up to 10 % off one or two sides), brightened or with more contrast, blurred, or
the next frame of a burst (shifted a few pixels, with sensor noise). The rest stay alone. The photos are distinct
Flickr8k images, so the negatives include what CLIP finds most alike — other photos of dogs on grass, of children
at play — which must *not* be grouped. Truth: a pair is a duplicate when both files come from the same photo.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

EDITS = ("resize", "jpeg", "crop", "brighter", "contrast", "blur", "burst")


def copy_of(img: Image.Image, edit: str, rng: random.Random) -> Image.Image:
    w, h = img.size
    if edit == "resize":
        f = rng.uniform(0.4, 0.7)
        return img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.LANCZOS)
    if edit == "jpeg":
        return img  # written below at a low quality
    if edit == "crop":
        left, top = int(w * rng.uniform(0, 0.1)), int(h * rng.uniform(0, 0.1))
        right = w - int(w * rng.uniform(0, 0.1 if left == 0 else 0.02))
        bottom = h - int(h * rng.uniform(0, 0.1 if top == 0 else 0.02))
        return img.crop((left, top, right, bottom))
    if edit == "brighter":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(1.15, 1.35))
    if edit == "contrast":
        return ImageEnhance.Contrast(img).enhance(rng.uniform(1.2, 1.5))
    if edit == "blur":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.5)))
    # burst: the camera moved a little, the sensor is noisy
    dx, dy = rng.randint(-6, 6), rng.randint(-6, 6)
    arr = np.asarray(img.transform(img.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy),
                                   resample=Image.Resampling.BILINEAR), dtype=np.float32)
    arr = arr + np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_set(photos: Path, out: Path, n: int, seed: int) -> dict[str, str]:
    """Write the set under ``out``; returns {file name: the photo it comes from}."""
    rng = random.Random(seed)
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    out.mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    for name in rng.sample(names, n):
        img = Image.open(photos / name).convert("RGB")
        stem = Path(name).stem
        img.save(out / f"{stem}.jpg", quality=95)
        truth[f"{stem}.jpg"] = stem
        for j in range(rng.choice((0, 1, 1, 2))):
            edit = rng.choice(EDITS)
            copy = f"{stem}_{edit}{j}.jpg"
            copy_of(img, edit, rng).save(out / copy, quality=35 if edit == "jpeg" else 90)
            truth[copy] = stem
    return truth


def precision_recall(groups: list[list[str]], truth: dict[str, str]) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of ``groups`` (lists of file names) against ``truth``; and the pair counts."""
    found = {(a, b) for g in groups for a in g for b in g if a < b}
    by_photo: dict[str, list[str]] = {}
    for name, photo in truth.items():
        by_photo.setdefault(photo, []).append(name)
    true = {(a, b) for names in by_photo.values() for a in names for b in names if a < b}
    right = len(found & true)
    return (right / len(found) if found else 1.0), (right / len(true) if true else 1.0), len(found), len(true)
