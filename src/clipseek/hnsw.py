"""The HNSW graph of one vector field (usearch), and Vespa's closeness. Exact scoring over the float32 rows, and
the plan that chooses between the two, are :mod:`clipseek.vectors`'.

Distances follow Vespa's ``angular`` metric: ``d = arccos(q·a / (|q||a|))`` in radians, and relevance is
Vespa's ``closeness = 1 / (1 + d)``.

The HNSW graph only proposes candidates. It holds int8 codes of the L2-normalised vectors, scaled so the
field's largest components (ignoring 1 in 10,000, which saturate) use the whole int8 range, compared by inner
product, which is the cosine up to quantisation noise. The codes are made here and handed to usearch as int8:
given float32, usearch would normalise each vector and multiply by 127, and a 512-dim unit vector's components
(~0.04) would then use ±20 of the ±127 (200k × 512: the graph's own top 10 had recall 0.81 that way, 0.95 now). A
search returns its whole beam (targetHits + exploreAdditionalHits candidates) and every candidate is re-scored
exactly from the float32 rows, so relevance values are the same whichever plan ran and the noise costs no
recall. int8 is a quarter of float32's memory and the fastest to compare.

The graph's keys are the field's slots (rows of its vector file, appended in order), so it grows by appending
the rows past the ones it covers. Removed or replaced documents leave dead slots in the graph; searches skip
them (and slots outside a filter) with a bitmap of the slots that may be returned.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class HnswParams:
    """Vespa's ``hnsw`` index settings (the defaults of the schema of Vespa's text-image sample app)."""

    max_links_per_node: int = 16
    neighbors_to_explore_at_insert: int = 500


def closeness(cosine: np.ndarray) -> np.ndarray:
    """Vespa's closeness for angular distance: 1 / (1 + arccos(cos))."""
    angle = np.arccos(np.maximum(np.minimum(cosine.astype(np.float64), 1.0), -1.0))  # np.clip costs 3× more
    return 1.0 / (1.0 + angle)


SNAPSHOT_FORMAT = "usearch-i8-ip-2"  # 1: codes usearch made from float32 (normalised, × 127); meta has its CRC-32
ADD_CHUNK = 65_536  # rows coded and added at a time


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read in 16 MiB blocks."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(16 * 1024 * 1024):
            crc = zlib.crc32(block, crc)
    return crc


class AnnIndex:
    """An HNSW graph over slots ``0 .. len-1`` of one field; thread-safe; snapshots to ``<dir>/<field>.<n>.usearch``
    with its quantisation scale in ``<dir>/<field>.<n>.json``."""

    def __init__(self, dim: int, params: HnswParams, scale: float | None = None) -> None:
        import onnxruntime  # noqa: F401  loaded first: importing it after usearch segfaults (ORT 1.32, usearch 2.26)
        from usearch.index import Index

        self.dim, self.params = dim, params
        self.scale = scale
        self.is_view = False
        self._covered = 0
        self._lock = threading.Lock()
        self._index = Index(ndim=dim, metric="ip", dtype="i8", connectivity=params.max_links_per_node,
                            expansion_add=params.neighbors_to_explore_at_insert, expansion_search=64)

    def __len__(self) -> int:
        return self._covered

    @property
    def memory_bytes(self) -> int:
        return int(self._index.memory_usage)

    def _codes(self, rows: np.ndarray) -> np.ndarray:
        """int8 codes of the normalised rows: components × scale × 127, rounded, saturated at ±127."""
        x = np.array(rows, dtype=np.float32, ndmin=2)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.where(norms > 0, norms, 1.0)
        if self.scale is None:  # from the first rows: the largest components (ignoring 1 in 10,000) fill the range
            top = float(np.quantile(np.abs(x), 0.9999)) if x.size else 0.0
            self.scale = 1.0 / max(top, 2.5 / self.dim ** 0.5)
        x *= np.float32(127.0 * self.scale)
        np.rint(x, out=x)
        np.clip(x, -127.0, 127.0, out=x)
        return x.astype(np.int8)

    def extend(self, rows: np.ndarray, upto: int) -> None:
        """Add ``rows[len(self):upto]`` (the slots past the ones covered), using all cores."""
        with self._lock:
            if upto > self._covered and self.is_view:
                raise RuntimeError("a memory-mapped graph cannot grow; load it without view")
            for start in range(self._covered, upto, ADD_CHUNK):  # chunks: codes, not a float32 copy, in memory
                end = min(start + ADD_CHUNK, upto)
                self._index.add(np.arange(start, end, dtype=np.uint64), self._codes(rows[start:end]))
                self._covered = end

    def search(self, query: np.ndarray, count: int, ef: int, allow: np.ndarray | None = None) -> np.ndarray:
        """The beam's candidate slots (at least ``count`` when the graph has them), nearest first by the graph's
        approximate distance. ``ef`` is the beam (Vespa: targetHits + exploreAdditionalHits); ``allow`` a bitmap
        (``np.packbits(..., bitorder="little")``) of the slots that may be returned."""
        width = min(max(ef, count), self._covered)
        if width <= 0:
            return np.zeros(0, dtype=np.int64)
        q = np.asarray(query, dtype=np.float32)
        norm = float(np.sqrt(q @ q))
        q = q * np.float32(127.0 * (self.scale or 1.0) / norm if norm > 0 else 0.0)  # as _codes, inline: ~3 µs less
        np.rint(q, out=q)
        np.minimum(q, 127.0, out=q)
        np.maximum(q, -127.0, out=q)
        code = q.astype(np.int8)[None]
        with self._lock:  # usearch's compiled index directly: the Python wrapper's result objects cost ~10 µs
            self._index.expansion_search = width  # type: ignore[misc]
            found, _, counts, _, _ = self._index._compiled.search_many(code, count=width, exact=False, threads=1)
        keys = found[0, : counts[0]].astype(np.int64)
        if allow is not None:
            keys = keys[keys < len(allow) * 8]
            keys = keys[(allow[keys >> 3] >> (keys & 7)) & 1 == 1]
        return keys

    def save(self, folder: Path, field: str) -> Path:
        """Write a snapshot atomically, named by the slot count it covers; older snapshots are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            covered = self._covered
            target = folder / f"{field}.{covered}.usearch"
            meta = folder / f"{field}.{covered}.json"
            tmp = folder / f".{field}.{covered}.tmp"
            self._index.save(str(tmp))
        meta_tmp = folder / f".{field}.{covered}.json.tmp"
        meta_tmp.write_text(json.dumps({"format": SNAPSHOT_FORMAT, "scale": self.scale, "covered": covered,
                                        "crc32": file_crc32(tmp)}))
        os.replace(meta_tmp, meta)
        os.replace(tmp, target)
        for old in [*folder.glob(f"{field}.*.usearch"), *folder.glob(f"{field}.*.json")]:
            if old not in (target, meta):
                old.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, folder: Path, field: str, dim: int, params: HnswParams, *, view: bool = False,
             max_covered: int | None = None) -> AnnIndex | None:
        """The newest readable snapshot covering at most ``max_covered`` slots, or None (caller rebuilds).

        ``view`` memory-maps the file instead of reading it (instant, shared between processes; read-only)."""
        snapshots = []
        for path in folder.glob(f"{field}.*.usearch"):
            label = path.name[len(field) + 1: -len(".usearch")]
            if label.isdigit() and (max_covered is None or int(label) <= max_covered):
                snapshots.append((int(label), path))
        for covered, path in sorted(snapshots, reverse=True):
            try:  # another format (older clipseek), a torn or damaged file: try an older one, else rebuild
                meta = json.loads(path.with_suffix(".json").read_text())
                if meta.get("format") != SNAPSHOT_FORMAT or meta.get("covered") != covered:
                    continue
                if meta.get("crc32") != file_crc32(path):  # usearch would crash on a damaged file: never load it
                    continue
                index = cls(dim, params, scale=float(meta["scale"]))
                if view:
                    index._index.view(str(path))
                else:
                    index._index.load(str(path))
            except Exception:
                continue
            if index._index.ndim == dim and len(index._index) == covered:
                index.is_view, index._covered = view, covered
                return index
        return None
