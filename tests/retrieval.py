"""Text→image retrieval through the product's pipeline: tokenizer → ONNX → vectors → collection (exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipseek.collection import Collection, Document


def read_captions(root: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in (root / "captions.txt").read_text(encoding="utf-8").splitlines():
        name, caption = line.split("\t", 1)
        pairs.append((name, caption))
    return pairs


def recall_at(ranked: list[list[str]], relevant: list[str], k: int) -> float:
    return float(np.mean([rel in r[:k] for r, rel in zip(ranked, relevant)]))


def text_to_image(image_vectors: np.ndarray, names: list[str], caption_vectors: np.ndarray, folder: Path,
                  field: str = "tiny_image", k: int = 5) -> list[list[str]]:
    """Rank images for every caption with the engine's exact search; returns image names per caption."""
    with Collection.create(folder) as coll:
        coll.add_field(field, "tiny", image_vectors.shape[1])
        coll.feed([Document(n, image_file_name=n, vectors={field: v}) for n, v in zip(names, image_vectors)])
        return [[h.docid for h in coll.search(q, field=field, hits=k, approximate=False).hits]
                for q in caption_vectors]
