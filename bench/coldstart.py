"""First query, cold and warm: what a one-off `clipseek search` and a server start cost, per backend.

    .venv/bin/python bench/coldstart.py [--rounds 3]

1. `clipseek search "..." --model tiny` as a user runs it (a new process each time, wall clock from the shell's
   point of view), on a 200-image collection: with an empty model cache (cold: OpenVINO compiles the towers)
   and again (warm: the compiled towers come from $CLIPSEEK_CACHE/openvino), per backend.
2. Random-init ViT-B/32 in this process: loading the encoder plus one 8-word query, cold and warm cache.
Rounds are interleaved across backends; the median of the rounds is printed.
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

QUERY = "a black dog runs across the green grass today"


def search_once(coll: Path, cache: Path, backend: str) -> float:
    env = {**os.environ, "CLIPSEEK_CACHE": str(cache), "CLIPSEEK_BACKEND": backend}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipseek.cli", "search", "a red circle", "--collection", str(coll),
                    "--model", "tiny", "--json"], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def vit_once(folder: Path, cache: Path, backend: str) -> float:
    from clipseek.models import Runtime

    code = ("import time, sys; t = time.perf_counter(); from clipseek.models import open_encoder, Runtime; "
            f"e = open_encoder(__import__('pathlib').Path({str(folder)!r}), "
            f"runtime={'None' if backend == 'auto' else repr(Runtime(backend, 'fp32'))}); "
            f"e.embed_texts([{QUERY!r}]); print(time.perf_counter() - t)")
    env = {**os.environ, "CLIPSEEK_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coldstart-"))
    from clipseek import load_model, synth
    from clipseek.collection import Collection
    from clipseek.indexer import Indexer

    gallery = synth.write_dataset(work / "g", 200, seed=1)
    with Collection.create(work / "c") as coll:
        Indexer(coll, load_model("tiny", backend="onnxruntime")).run([gallery / "images"])
    import open_clip
    import torch

    from clipseek.models import get_spec
    from clipseek.models.loader import export_model

    spec = get_spec("ViT-B/32")
    torch.manual_seed(0)
    vit = export_model(open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=True), spec, work / "vit")
    backends = ["auto", "onnxruntime", "openvino"]  # auto: what a user gets (no record here: a fresh cache)
    rows: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for backend in backends:
            cache = work / f"cache-{backend}"
            shutil.rmtree(cache, ignore_errors=True)
            for state in ("cold", "warm"):
                rows.setdefault(("clipseek search, tiny", backend, state), []).append(
                    search_once(work / "c", cache, backend))
            shutil.rmtree(cache, ignore_errors=True)
            for state in ("cold", "warm"):
                rows.setdefault(("ViT-B/32 load + first query (in-process)", backend, state), []).append(
                    vit_once(vit, cache, backend))
    print(f"\nmedian of {args.rounds} interleaved rounds, seconds (a new process each time)\n")
    print("| what | backend | cold cache | warm cache |\n|---|---|---:|---:|")
    for what in ("clipseek search, tiny", "ViT-B/32 load + first query (in-process)"):
        for backend in backends:
            cold = statistics.median(rows[what, backend, "cold"])
            warm = statistics.median(rows[what, backend, "warm"])
            print(f"| {what} | {backend} | {cold:.2f} | {warm:.2f} |")


if __name__ == "__main__":
    main()
