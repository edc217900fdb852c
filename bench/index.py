"""Indexing speed, side by side in one run: end-to-end `Indexer` vs the encoder alone on pre-decoded tensors,
and the default against open_clip eager end to end.

    .venv/bin/python bench/index.py [--limit 6824] [--backend auto] [--precision auto] [--vs-eager] [--check]

ViT-B/32 architecture, random weights (none can be downloaded here). ``--check`` runs `clipseek models check`
on the export first, as `clipseek models fetch` does, so that ``auto`` is what a user gets after a fetch.

1. ``--vs-eager``: the Flickr8k JPEGs, interleaved in 4 chunks: open_clip eager fp32 end to end (PIL decode,
   open_clip's own preprocess, encode_image, batch 32) against `Indexer` with the chosen runtime.
2. The Flickr8k JPEGs in ../shared/data/flickr8k/images: end to end vs encoder only.
3. 50 generated 4000x3000 JPEGs (draft decoding on).
4. A re-run over the unchanged Flickr8k files.
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
from clipseek.models import TOWERS, OnnxEncoder, choose, get_spec, open_encoder
from clipseek.models.check import check_model, read_record
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


def versus_eager(clip, enc: OnnxEncoder, files: list[Path], work: Path, chunks: int = 4) -> None:
    """open_clip eager fp32 end to end against `Indexer` on the same files, interleaved chunk by chunk."""
    from PIL import Image

    _, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    times = {"eager": 0.0, "clipseek": 0.0}
    size = -(-len(files) // chunks)
    ref, got = [], {}
    for c in range(chunks):
        part = files[c * size:(c + 1) * size]
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(part), 32):
                batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in part[i:i + 32]])
                out = clip.encode_image(batch)
                ref.append((out / out.norm(dim=-1, keepdim=True)).numpy())
        times["eager"] += time.perf_counter() - start
        folder = work / f"chunk{c}"
        folder.mkdir()
        for f in part:
            (folder / f.name).symlink_to(f)
        start = time.perf_counter()
        with Collection.create(work / f"cc{c}") as coll:
            Indexer(coll, enc).run([folder])
        times["clipseek"] += time.perf_counter() - start
        with Collection.open(work / f"cc{c}", readonly=True) as coll:
            for doc in coll.iter_documents():
                got[Path(doc.path or "").name] = doc.vectors[enc.spec.field_name]
    eager_rate, rate = len(files) / times["eager"], len(files) / times["clipseek"]
    cos = np.sum(np.concatenate(ref) * np.stack([got[f.name] for f in files]), axis=1)
    print(f"Flickr8k {len(files)} JPEGs end to end, 4 interleaved chunks: open_clip eager fp32 {eager_rate:.1f} img/s, "
          f"clipseek ({enc.describe()}) {rate:.1f} img/s = {rate / eager_rate:.2f}x; cos to eager: min "
          f"{cos.min():.6f}, mean {cos.mean():.6f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="index only the first N Flickr8k files (0 = all)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--vs-eager", action="store_true", help="open_clip eager end to end against the default")
    ap.add_argument("--check", action="store_true", help="run `clipseek models check` on the export first")
    ap.add_argument("--only-vs-eager", action="store_true")
    args = ap.parse_args()
    spec = get_spec("ViT-B/32")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    clip = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True).eval()
    folder = export_model(clip, spec, work / "m")
    if args.check:
        check_model(folder, say=print)
    measured = read_record(folder)
    enc = open_encoder(folder, runtime={t: choose(args.backend, args.precision, measured=measured, tower=t)
                                        for t in TOWERS})
    files = sorted(FLICKR.glob("*.jpg"))
    if args.vs_eager or args.only_vs_eager:
        versus_eager(clip, enc, files[: args.limit or None], work)
        if args.only_vs_eager:
            return
    if args.limit:
        subset = work / "flickr"
        subset.mkdir()
        for f in files[: args.limit]:
            (subset / f.name).symlink_to(f)
        source = subset
        files = files[: args.limit]
    else:
        source = FLICKR
    print(f"ViT-B/32 random init, {enc.describe()}, threads={enc.threads}")
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
