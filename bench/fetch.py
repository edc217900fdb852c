"""From a downloaded weights file to a ready model: the ONNX builder against the torch export, side by side.

    .venv/bin/python bench/fetch.py [--rounds 3] [--models ViT-B/32 RN50 ViT-B/16]

For each model, a random-init open_clip model of the real architecture is saved as the hub's
open_clip_model.safetensors once. Then, interleaved per round, a new process runs exactly what a user runs:
`clipseek models fetch NAME --weights FILE --to DIR --skip-check --exporter builder|torch` (wall clock, process
start and imports included: that is what the torch path costs a user), and the two folders' towers are compared
on the same inputs. Prints a Markdown table: median and best of the rounds, and the largest difference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def save_random(name: str, path: Path) -> None:
    import open_clip
    import safetensors.torch
    import torch

    from clipseek.models import get_spec

    spec = get_spec(name)
    torch.manual_seed(0)
    clip = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=spec.quick_gelu)
    safetensors.torch.save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))


def fetch_once(name: str, weights: Path, out: Path, exporter: str) -> tuple[float, float]:
    """(seconds, peak resident MiB of the fetch process)."""
    shutil.rmtree(out, ignore_errors=True)
    code = ("import sys, resource; from clipseek.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "models", "fetch", name, "--weights", str(weights),
                           "--to", str(out), "--skip-check", "--exporter", exporter],
                          check=True, capture_output=True, text=True, env={**os.environ, "CLIPSEEK_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK")][-1].split()[1]
    return seconds, int(peak) / 1024


def largest_difference(a: Path, b: Path, image_size: int) -> float:
    import numpy as np
    import onnxruntime as ort

    from clipseek.tokenizer import get_tokenizer

    tokens = get_tokenizer()(["a dog runs on the beach", "two children play football in a park"])
    pixels = np.random.default_rng(0).normal(size=(2, 3, image_size, image_size)).astype(np.float32)
    worst = 0.0
    for tower, feed in (("text", {"input_ids": tokens}), ("image", {"pixel_values": pixels})):
        x, y = (ort.InferenceSession(str(f / f"{tower}.onnx")).run(None, feed)[0] for f in (a, b))
        worst = max(worst, float(np.abs(x - y).max() / np.abs(y).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50", "ViT-B/16"])
    args = ap.parse_args()
    from clipseek.models import get_spec

    work = Path(tempfile.mkdtemp(prefix="fetch-bench-"))
    try:
        print("| model | weights MB | builder s (median / best) | torch s (median / best) | torch ÷ builder | "
              "peak RSS MiB builder / torch | max rel. diff |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.models:
            spec = get_spec(name)
            weights = work / f"{spec.slug}.safetensors"
            save_random(name, weights)
            times: dict[str, list[float]] = {"builder": [], "torch": []}
            peaks: dict[str, float] = {"builder": 0.0, "torch": 0.0}
            for _ in range(args.rounds):
                for exporter in ("builder", "torch"):
                    seconds, peak = fetch_once(name, weights, work / exporter, exporter)
                    times[exporter].append(seconds)
                    peaks[exporter] = max(peaks[exporter], peak)
            diff = largest_difference(work / "builder", work / "torch", spec.image_size)
            b, t = statistics.median(times["builder"]), statistics.median(times["torch"])
            print(f"| {name} | {weights.stat().st_size / 1e6:.0f} | {b:.1f} / {min(times['builder']):.1f} | "
                  f"{t:.1f} / {min(times['torch']):.1f} | {t / b:.2f}× | {peaks['builder']:.0f} / "
                  f"{peaks['torch']:.0f} | {diff:.1e} |", flush=True)
            weights.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
