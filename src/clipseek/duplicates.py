"""Near-duplicate groups: the same photo resized, re-encoded, lightly cropped or edited, or a burst of nearly
identical frames — and not two photos that merely show the same kind of thing.

Two stages. Candidates: each image's ``NEIGHBOURS`` nearest images by its CLIP vector (the collection's own
nearest-neighbour search): a copy of a photo is among the nearest of any model, so this finds every pair worth a
look without comparing all pairs. Decision: the pixels. Each candidate is decoded once to a small grey thumbnail
(JPEG draft decoding: a few ms even for a 12-megapixel file), and a pair is a duplicate when :func:`pixel_score` —
the best normalised correlation of the two thumbnails over a few crop offsets, so a light crop still lines up —
reaches the threshold. CLIP similarity alone cannot tell a copy from another photo of the same scene ("visually
similar is not duplicate"); pixels can, and do not depend on how good the model is.

The threshold default (``DEFAULT_THRESHOLD``) was measured by ``bench/duplicates.py`` on Flickr8k photos with
generated duplicates against their nearest distinct photos (figures in bench/README.md).

Which to keep, in order: the most pixels (the original rather than a downscaled copy), then the sharpest
(variance of the Laplacian of a 128-pixel grey rendering), then the oldest file (the first one you had).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .collection import Collection, Document, Hit
from .errors import ImageError
from .transforms import open_image

DEFAULT_THRESHOLD = 0.88
NEIGHBOURS = 8
THUMB = 32  # the grey thumbnail's side
_CROPS = (0.0, 0.06, 0.12)  # fractions of each side trimmed when lining up a lightly cropped copy
_SHARP = 128


@dataclass
class Picture:
    """What the decision needs of one image: its grey thumbnail, sharpness, size and age."""

    docid: str
    path: str
    views: np.ndarray  # [V, THUMB²]: the whole image first, then trimmed ones; each zero-mean, unit-norm
    sharpness: float
    pixels: int
    mtime: float


@dataclass
class Group:
    keep: str
    members: list[str]  # docids, keep first
    paths: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # member → its score against the kept one


Reader = Callable[[Document], "bytes | None"]


def read_path(doc: Document) -> bytes | None:
    """The document's file, by its path (the command line's reader; the server reads only what it serves)."""
    if not doc.path:
        return None
    with open(os.fsencode(doc.path), "rb") as fh:
        return fh.read()


def load_picture(doc: Document, read: Reader = read_path) -> Picture | None:
    """The picture of a document whose file can be read; None when it cannot (moved, deleted, unreadable)."""
    path = doc.path or doc.docid
    try:
        data = read(doc)
        if data is None:
            return None
        img, _info = open_image(io.BytesIO(data), draft_size=THUMB * 4, name=path)
    except (OSError, ImageError):
        return None
    grey = img.convert("L")
    small = np.asarray(grey.resize((THUMB * 2, THUMB * 2), Image.Resampling.BOX), dtype=np.float32)
    sharp_img = np.asarray(grey.resize((_SHARP, _SHARP), Image.Resampling.BILINEAR), dtype=np.float32)
    lap = (-4 * sharp_img[1:-1, 1:-1] + sharp_img[:-2, 1:-1] + sharp_img[2:, 1:-1] + sharp_img[1:-1, :-2]
           + sharp_img[1:-1, 2:])
    width, height = doc.width or img.width, doc.height or img.height
    return Picture(doc.docid, doc.path or "", _views(small), float(lap.var()), int(width) * int(height),
                   float(doc.mtime or 0.0))


def _normalised(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 1e-6 else a


def _crop(grey: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    size = grey.shape[0]
    left, top, right, bottom = (int(round(v * size)) for v in box)
    part = Image.fromarray(grey[top:size - bottom, left:size - right])
    return np.asarray(part.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float32)


def _views(grey: np.ndarray) -> np.ndarray:
    boxes: list[tuple[float, float, float, float]] = [(0.0, 0.0, 0.0, 0.0)]
    for c in _CROPS[1:]:
        boxes += [(c, 0, 0, 0), (0, c, 0, 0), (0, 0, c, 0), (0, 0, 0, c), (c / 2, c / 2, c / 2, c / 2),
                  (c, c, 0, 0), (0, 0, c, c), (c, 0, 0, c), (0, c, c, 0)]
    return np.stack([_normalised(_crop(grey, box)).ravel() for box in boxes])


def pixel_score(a: Picture, b: Picture) -> float:
    """How well the two thumbnails agree: the best correlation (−1..1) of either whole image against the other
    trimmed by up to 12 % on any side (a light crop, then resized as the copy was)."""
    return float(max((a.views @ b.views[0]).max(), (b.views @ a.views[0]).max()))


def _keep_order(p: Picture) -> tuple[int, float, float]:
    return (-p.pixels, -p.sharpness, p.mtime)


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def find_groups(coll: Collection, field: str, *, threshold: float = DEFAULT_THRESHOLD,
                neighbours: int = NEIGHBOURS, progress: Callable[[int, int], None] | None = None,
                read: Reader = read_path) -> list[Group]:
    """Groups of near-duplicates among the documents with vectors in ``field`` (largest groups first)."""
    docs = [d for d in coll.iter_documents(with_vectors=True) if field in d.vectors]
    by_id = {d.docid: d for d in docs}
    pictures: dict[str, Picture | None] = {}

    def picture(docid: str) -> Picture | None:
        if docid not in pictures:
            pictures[docid] = load_picture(by_id[docid], read)
        return pictures[docid]

    union, scores = _Union(), {}
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(docs):
        result = coll.search(doc.vectors[field], field=field, hits=neighbours + 1)
        for hit in result.hits:
            other = hit.docid
            pair = (min(doc.docid, other), max(doc.docid, other))
            if other == doc.docid or other not in by_id or pair in seen:
                continue
            seen.add(pair)
            a, b = picture(doc.docid), picture(other)
            if a is None or b is None:
                continue
            score = pixel_score(a, b)
            if score >= threshold:
                union.join(*pair)
                scores[pair] = score
        if progress:
            progress(i + 1, len(docs))
    members: dict[str, list[str]] = {}
    for docid in {d for pair in scores for d in pair}:
        members.setdefault(union.find(docid), []).append(docid)
    groups = []
    for ids in members.values():
        pics = sorted((p for p in (picture(d) for d in ids) if p is not None), key=_keep_order)
        keep = pics[0]
        ordered = [p.docid for p in pics]
        groups.append(Group(keep.docid, ordered, {p.docid: p.path for p in pics},
                            {p.docid: round(pixel_score(keep, p), 4) for p in pics[1:]}))
    groups.sort(key=lambda g: (-len(g.members), g.paths[g.keep]))
    return groups


def collapse(hits: Sequence[Hit], coll: Collection, *, threshold: float = DEFAULT_THRESHOLD,
             read: Reader = read_path) -> list[Hit]:
    """``hits`` without the ones that duplicate a better-ranked hit (each kept hit stands for its copies)."""
    kept: list[tuple[Hit, Picture | None]] = []
    for hit in hits:
        doc = coll.get(hit.docid, with_vectors=False)
        pic = load_picture(doc, read) if doc is not None else None
        if pic is not None and any(p is not None and pixel_score(p, pic) >= threshold for _, p in kept):
            continue
        kept.append((hit, pic))
    return [h for h, _ in kept]


def as_json(groups: Iterable[Group]) -> list[dict[str, object]]:
    return [{"keep": g.paths[g.keep], "duplicates": [{"path": g.paths[d], "score": g.scores[d]}
                                                     for d in g.members[1:]]} for g in groups]
