"""Indexing speed, side by side in one run: end-to-end `Indexer` vs the encoder alone on pre-decoded tensors.

    .venv/bin/python bench/index.py [--limit 6824] [--precision fp32]

1. The Flickr8k JPEGs in ../shared/data/flickr8k/images with the ViT-B/32 architecture (random weights).
2. 50 generated 4000x3000 JPEGs (draft decoding on).
3. A re-run over the unchanged Flickr8k files.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from clipseek.collection import Collection
from clipseek.indexer import Indexer
from clipseek.models import OnnxEncoder, get_spec
from clipseek.models.loader import export_model

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"


def encoder_only(enc: OnnxEncoder, files: list[Path]) -> float:
    pixels = np.stack([enc.preprocess(p) for p in files])
    enc.embed_pixels(pixels[:enc.batch_size])
    start = time.perf_counter()
    enc.embed_pixels(pixels)
    return len(files) / (time.perf_counter() - start)


def end_to_end(enc: OnnxEncoder, folder: Path, workdir: Path) -> tuple[float, float, int]:
    coll_dir = workdir / f"c-{folder.name}"
    with Collection.create(coll_dir) as coll:
        start = time.perf_counter()
        report = Indexer(coll, enc).run([folder])
        first = time.perf_counter() - start
    with Collection.open(coll_dir) as coll:
        start = time.perf_counter()
        again = Indexer(coll, enc).run([folder])
        rerun = time.perf_counter() - start
        assert again.indexed == 0
    return report.indexed / first, rerun, report.indexed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="index only the first N Flickr8k files (0 = all)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    args = ap.parse_args()
    spec = get_spec("ViT-B/32")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    folder = export_model(open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True), spec, work / "m")
    enc = OnnxEncoder(folder, precision=args.precision)
    files = sorted(FLICKR.glob("*.jpg"))
    if args.limit:
        subset = work / "flickr"
        subset.mkdir()
        for f in files[: args.limit]:
            (subset / f.name).symlink_to(f)
        source = subset
        files = files[: args.limit]
    else:
        source = FLICKR
    print(f"ViT-B/32 random init, {args.precision}, threads={enc.threads}")
    base = encoder_only(enc, files[:320])
    rate, rerun, n = end_to_end(enc, source, work)
    print(f"Flickr8k ({n} JPEGs, 224x224): encoder only {base:.1f} img/s, end to end {rate:.1f} img/s "
          f"= {rate / base:.2f}x; unchanged re-run {rerun:.2f} s")

    big = work / "big"
    big.mkdir()
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(50):
        small = Image.open(files[i % len(files)]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(small, np.int16) + rng.integers(-6, 7, (3000, 4000, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(big / f"big{i:02d}.jpg", quality=90)
    big_files = sorted(big.glob("*.jpg"))
    base_big = encoder_only(enc, big_files[:32])
    rate_big, _, n_big = end_to_end(enc, big, work)
    print(f"{n_big} JPEGs 4000x3000: encoder only {base_big:.1f} img/s, end to end {rate_big:.1f} img/s "
          f"= {rate_big / base_big:.2f}x")


if __name__ == "__main__":
    main()
