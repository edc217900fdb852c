"""Encoder speed, side by side in one run: open_clip eager fp32 vs clipseek's ONNX towers (random-init ViT-B/32).

    .venv/bin/python bench/encoders.py [--threads 2] [--batches 4]

Prints image throughput at batch 32 (pre-decoded tensors, so only the encoder is measured), the cosine of each
variant to open_clip fp32 on real Flickr8k images, and one 8-word text query's latency: the seed's fixed
77-token fp32 run against clipseek's early exit (fp32 and int8).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import open_clip

from clipseek.models import OnnxEncoder, get_spec
from clipseek.models.loader import export_model

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"
QUERY = "a black dog runs across the green grass today"  # 8 words + punctuation-free


def rate(fn, batch: np.ndarray, batches: int) -> float:
    fn(batch)
    start = time.perf_counter()
    for _ in range(batches):
        fn(batch)
    return batches * len(batch) / (time.perf_counter() - start)


def p50_ms(fn, repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_spec("ViT-B/32")
    torch.manual_seed(0)
    clip = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True).eval()
    folder = export_model(clip, spec, Path(tempfile.mkdtemp()) / "vit_b_32")
    fp32 = OnnxEncoder(folder, threads=args.threads)
    int8 = OnnxEncoder(folder, threads=args.threads, precision="int8")

    files = sorted(FLICKR.glob("*.jpg"))[:32]
    pixels = np.stack([fp32.preprocess(p) for p in files]) if files else \
        np.random.RandomState(0).randn(32, 3, 224, 224).astype(np.float32)
    with torch.no_grad():
        ref = clip.encode_image(torch.from_numpy(pixels)).numpy()

        def eager(x: np.ndarray) -> None:
            clip.encode_image(torch.from_numpy(x))
        base = rate(eager, pixels, args.batches)
    print(f"image encoder, ViT-B/32 random init, batch 32, {args.threads} threads "
          f"({'Flickr8k' if files else 'random'} pixels)")
    print(f"  {'open_clip eager fp32':<28} {base:6.1f} img/s  1.00x  cos 1.000000")
    for name, enc in [("clipseek ONNX fp32", fp32), ("clipseek ONNX int8 (opt-in)", int8)]:
        r = rate(enc._encode_pixels, pixels, args.batches)
        print(f"  {name:<28} {r:6.1f} img/s  {r / base:.2f}x  cos {cos(enc._encode_pixels(pixels), ref):.6f}")

    tokens = fp32.tokenizer([QUERY])
    with torch.no_grad():
        text_ref = clip.encode_text(torch.from_numpy(tokens)).numpy()
    print(f"text query {QUERY!r} ({int(fp32.tokenizer.lengths(tokens)[0])} tokens), p50 incl. tokenizing")
    rows = [
        ("fixed 77 tokens, ONNX fp32 (seed)", lambda: fp32._encode_tokens(fp32.tokenizer([QUERY])), fp32, True),
        ("clipseek early exit, fp32", lambda: fp32.embed_texts([QUERY]), fp32, False),
        ("clipseek early exit, int8", lambda: int8.embed_texts([QUERY]), int8, False),
    ]
    for name, fn, enc, _full in rows:
        print(f"  {name:<36} {p50_ms(fn):6.2f} ms  cos {cos(enc.embed_texts([QUERY]), text_ref):.6f}")


if __name__ == "__main__":
    main()
