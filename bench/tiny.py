"""Quality of the bundled tiny CLIP through the product pipeline, on fresh synth sets (seeds never trained on).

    .venv/bin/python bench/tiny.py [--n 1000] [--seeds 777 12345]

Text → image, each caption's one image relevant: tokenizer → ONNX → vectors → the collection's exact search.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.retrieval import read_captions, recall_at, text_to_image  # noqa: E402

from clipseek import load_model, synth  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[777, 12345])
    args = ap.parse_args()
    model = load_model("tiny")
    for seed in args.seeds:
        folder = Path(tempfile.mkdtemp())
        synth.write_dataset(folder, args.n, seed)
        names = sorted(p.name for p in (folder / "images").iterdir())
        start = time.perf_counter()
        image_vectors = model.embed_images([folder / "images" / n for n in names])
        pairs = read_captions(folder)
        ranked = text_to_image(image_vectors, names, model.embed_texts([c for _, c in pairs]), folder / "c")
        relevant = [n for n, _ in pairs]
        print(f"seed {seed}: {args.n} images, {len(pairs)} captions: R@1 {recall_at(ranked, relevant, 1):.3f} "
              f"R@5 {recall_at(ranked, relevant, 5):.3f} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
