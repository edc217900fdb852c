"""Encoder speed and agreement, every variant side by side in one run, interleaved.

    .venv/bin/python bench/encoders.py [--models ViT-B/32,RN50] [--threads 2] [--rounds 5] [--quality 64]

For each model (random init: speed does not depend on the weights; no weights can be downloaded here) the
variants are: open_clip eager fp32 (torch, the baseline), and clipseek's exported towers in ONNX Runtime fp32,
OpenVINO fp32, OpenVINO bf16 (only where the CPU has bf16) and ONNX Runtime int8. Each round times one batch
of 32 pre-decoded Flickr8k images, then one 8-word query (20 calls, median), through every variant in turn, so
that this shared machine's drift hits all of them alike; best and median over the rounds are reported.

Agreement: cosine of each variant's vectors to ONNX Runtime fp32's (the exported towers) on ``--quality``
Flickr8k images and 4× as many captions, min and mean, and to open_clip eager for the fp32 reference itself.
The `default` column marks what `--precision auto` runs on this machine without a `clipseek models check`
record.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch

from clipseek.models import choose, get_spec, open_encoder
from clipseek.models.check import variants
from clipseek.models.loader import export_model
from clipseek.models.runtime import cpu_has_bf16, openvino_available

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
QUERY = "a black dog runs across the green grass today"  # 8 words


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def captions(n: int) -> list[str]:
    lines = (FLICKR / "captions.txt").read_text(encoding="utf-8").splitlines()
    return [ln.split("\t", 1)[1] for ln in lines[:n]]


def bench_model(name: str, args: argparse.Namespace) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    clip = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=spec.quick_gelu).eval()
    folder = export_model(clip, spec, Path(tempfile.mkdtemp(prefix="enc-bench-")) / spec.slug)
    encoders = {}
    for rt in variants():
        started = time.perf_counter()
        encoders[str(rt)] = (rt, open_encoder(folder, runtime=rt, threads=args.threads))
        print(f"  loaded {rt} in {time.perf_counter() - started:.1f} s", flush=True)
    reference = encoders["onnxruntime fp32 on cpu"][1]
    files = sorted((FLICKR / "images").glob("*.jpg"))
    pixels = np.stack([reference.preprocess(p) for p in files[: max(32, args.quality)]])
    batch = pixels[:32]
    texts = captions(4 * args.quality)

    def eager_images(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = clip.encode_image(torch.from_numpy(x)).numpy()
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True))

    def eager_text(t: list[str]) -> np.ndarray:
        with torch.no_grad():
            out = clip.encode_text(torch.from_numpy(reference.tokenizer(t))).numpy()
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True))

    image_fns: dict[str, Callable[[], object]] = {"open_clip eager fp32": lambda: eager_images(batch)}
    text_fns: dict[str, Callable[[], object]] = {"open_clip eager fp32": lambda: eager_text([QUERY])}
    for label, (_, enc) in encoders.items():
        image_fns[label] = lambda enc=enc: enc.embed_pixels(batch)
        text_fns[label] = lambda enc=enc: enc.embed_texts([QUERY])
    for fn in [*image_fns.values(), *text_fns.values()]:
        fn()  # warm
    image_rates: dict[str, list[float]] = {k: [] for k in image_fns}
    text_ms: dict[str, list[float]] = {k: [] for k in text_fns}
    for r in range(args.rounds):
        for label in image_fns:
            image_rates[label].append(len(batch) / timed(image_fns[label]))
            text_ms[label].append(statistics.median(timed(text_fns[label]) for _ in range(20)) * 1000)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)

    ref_img = reference.embed_pixels(pixels[: args.quality])
    ref_txt = reference.embed_texts(texts)
    eager_img, eager_txt = eager_images(pixels[: args.quality]), eager_text(texts)
    auto = choose()
    base = statistics.median(image_rates["open_clip eager fp32"])
    base_ms = statistics.median(text_ms["open_clip eager fp32"])
    print(f"\n{name} (random init), {args.threads} threads, batch 32, {args.rounds} interleaved rounds; "
          f"agreement on {args.quality} Flickr8k images and {len(texts)} captions\n")
    print("| variant | img/s best | img/s median | × eager (median) | query ms p50 (median of rounds) "
          "| min cos img | mean cos img | min cos text | mean cos text |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in image_fns:
        if label == "open_clip eager fp32":
            img, txt, against = eager_img, eager_txt, "(vs ONNX Runtime fp32)"
        else:
            enc = encoders[label][1]
            img, txt, against = enc.embed_pixels(pixels[: args.quality]), enc.embed_texts(texts), ""
        ci, ct = np.sum(img * ref_img, axis=1), np.sum(txt * ref_txt, axis=1)
        mark = " (default)" if label == str(auto) else ""
        med = statistics.median(image_rates[label])
        print(f"| {label}{mark} {against} | {max(image_rates[label]):.1f} | {med:.1f} | {med / base:.2f}× | "
              f"{statistics.median(text_ms[label]):.2f} ({statistics.median(text_ms[label]) / base_ms:.2f}× eager) | "
              f"{ci.min():.6f} | {ci.mean():.6f} | {ct.min():.6f} | {ct.mean():.6f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ViT-B/32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quality", type=int, default=64, help="images for the agreement columns (4x as many captions)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU bf16: {cpu_has_bf16()}; OpenVINO installed: {openvino_available()}; auto = {choose()}")
    for name in args.models.split(","):
        bench_model(name.strip(), args)


if __name__ == "__main__":
    main()
