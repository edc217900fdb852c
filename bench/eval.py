"""`clipseek eval` phases on the Flickr8k test split (1,000 images, 5,000 captions) with the tiny model.

    .venv/bin/python bench/eval.py

Embedding images (cold cache, then warm), encoding captions, and searching + metrics (exact, all 5,000
queries against all 1,000 images), each timed in this one run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from clipseek.evaluate import embed_set, load_dataset, metrics
from clipseek.models import load_model

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def main() -> None:
    start = time.perf_counter()
    data = load_dataset(FLICKR, "test")
    model = load_model("tiny")
    cache = Path(tempfile.mkdtemp()) / "cache"
    t = time.perf_counter()
    image_vecs, names, _ = embed_set(data, model, cache)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    embed_set(data, model, cache)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    text_vecs = model.embed_texts([c for _, c in data.queries])
    texts = time.perf_counter() - t
    row = {n: i for i, n in enumerate(names)}
    t = time.perf_counter()
    m = metrics(model.spec.name, text_vecs, image_vecs, np.asarray([row[n] for n, _ in data.queries]))
    search = time.perf_counter() - t
    print(f"Flickr8k test: {len(names)} images, {len(data.queries)} captions, model tiny")
    print(f"  embedding images: {cold:.2f} s cold, {warm:.2f} s from the cached collection")
    print(f"  encoding captions: {texts:.2f} s")
    print(f"  searching + metrics (exact, {len(data.queries)} queries): {search:.2f} s (target <= 2 s)")
    print(f"  total {time.perf_counter() - start:.2f} s; R@1 {m.recall['R@1']:.3f} (tiny knows shapes, not photos)")


if __name__ == "__main__":
    main()
