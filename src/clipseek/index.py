"""Nearest-neighbour search for one vector field: exact (NumPy over the float32 rows) and HNSW (usearch).

Distances follow Vespa's ``angular`` metric: ``d = arccos(q·a / (|q||a|))`` in radians, and relevance is
Vespa's ``closeness = 1 / (1 + d)``. The HNSW graph (usearch, half-precision vectors, cosine metric) only
proposes candidates; every returned hit is re-scored exactly from the float32 rows, so relevance values are
the same whichever plan ran.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class HnswParams:
    """Vespa's ``hnsw`` index settings (schema defaults of the seed app)."""

    max_links_per_node: int = 16
    neighbors_to_explore_at_insert: int = 500


def closeness(cosine: np.ndarray) -> np.ndarray:
    """Vespa's closeness for angular distance: 1 / (1 + arccos(cos))."""
    angle = np.arccos(np.clip(cosine.astype(np.float64), -1.0, 1.0))
    return 1.0 / (1.0 + angle)


def cosines(rows: np.ndarray, norms: np.ndarray, query: np.ndarray) -> np.ndarray:
    qn = float(np.linalg.norm(query))
    dots = rows @ query.astype(np.float32)
    denom = norms * qn
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, dots / np.where(denom > 0, denom, 1), 0.0)
    return np.asarray(out, dtype=np.float64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties by position)."""
    if k <= 0 or len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


class AnnIndex:
    """An HNSW graph over slots of one field; thread-safe; snapshots to ``<dir>/<field>.<n>.usearch``."""

    def __init__(self, dim: int, params: HnswParams) -> None:
        import onnxruntime  # noqa: F401  loaded first: importing it after usearch segfaults (ORT 1.32, usearch 2.26)
        from usearch.index import Index

        self.dim, self.params = dim, params
        self.is_view = False
        self._lock = threading.Lock()
        self._index = Index(ndim=dim, metric="cos", dtype="f16", connectivity=params.max_links_per_node,
                            expansion_add=params.neighbors_to_explore_at_insert, expansion_search=64)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def memory_bytes(self) -> int:
        return int(self._index.memory_usage)

    def add(self, slots: np.ndarray, vectors: np.ndarray, threads: int = 0) -> None:
        if len(slots):
            with self._lock:
                self._index.add(slots.astype(np.uint64), np.asarray(vectors, np.float32), threads=threads)

    def remove(self, slots: np.ndarray) -> None:
        if len(slots):
            with self._lock:
                self._index.remove(np.asarray(slots, dtype=np.uint64))

    def search(self, query: np.ndarray, count: int, ef: int) -> np.ndarray:
        """Candidate slots, nearest first; ``ef`` is the search beam (Vespa: targetHits + exploreAdditionalHits)."""
        with self._lock:
            self._index.expansion_search = max(ef, count)  # type: ignore[misc]
            found = self._index.search(query.astype(np.float32), count, threads=1)
        return np.asarray(found.keys, dtype=np.int64)

    def save(self, folder: Path, field: str, covered: int) -> Path:
        """Write a snapshot atomically, named by the slot count it covers; older snapshots are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{field}.{covered}.usearch"
        tmp = folder / f".{field}.{covered}.tmp"
        with self._lock:
            self._index.save(str(tmp))
        os.replace(tmp, target)
        for old in folder.glob(f"{field}.*.usearch"):
            if old != target:
                old.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, folder: Path, field: str, dim: int, params: HnswParams, *, view: bool = False
             ) -> tuple[AnnIndex, int] | None:
        """The newest readable snapshot and the slot count it covers, or None (caller rebuilds).

        ``view`` memory-maps the file instead of reading it (instant; read-only, for readers)."""
        snapshots = []
        for path in folder.glob(f"{field}.*.usearch"):
            label = path.name[len(field) + 1: -len(".usearch")]
            if label.isdigit():
                snapshots.append((int(label), path))
        for covered, path in sorted(snapshots, reverse=True):
            index = cls(dim, params)
            try:
                if view:
                    index._index.view(str(path))
                    index.is_view = True
                else:
                    index._index.load(str(path))
            except Exception:
                continue
            if index._index.ndim == dim:
                return index, covered
        return None
