"""The HNSW graph of one vector field (usearch), and Vespa's closeness. Exact scoring over the float32 rows, and
the plan that chooses between the two, are :mod:`clipseek.vectors`'.

Distances follow Vespa's ``angular`` metric: ``d = arccos(q·a / (|q||a|))`` in radians, and relevance is
Vespa's ``closeness = 1 / (1 + d)``.

The HNSW graph only proposes candidates. It holds int8 codes of the L2-normalised vectors, scaled so the
field's largest components (ignoring 1 in 100,000, which saturate) use the whole int8 range, compared by inner
product, which is the cosine up to quantisation noise. The codes are made here and handed to usearch as int8:
given float32, usearch would normalise each vector and multiply by 127, and a 512-dim unit vector's components
(~0.04) would then use ±20 of the ±127 (200k × 512: the graph's own top 10 had recall 0.81 that way, 0.95 now).

A search returns its whole beam (targetHits + exploreAdditionalHits candidates) and every candidate is re-scored
from the graph's int8 code plus a 4-bit residual kept here (the rest of the normalised component, in sixteenths
of a code step): 12 bits a component in memory, while the float32 rows stay on disk for exact search and
export. Ranked that way (an ad hoc check), 200k × 512 clustered vectors (bench/ann.py's) keep recall@10 0.998
against exact float32 ranking (int8 alone: 0.97; float16: 0.999), the cosine within 2e-5 (median; 1e-3 where a
component saturates).
The relevance of an HNSW hit is therefore the cosine to about 1e-4, not to float32's precision; an exact search
(``approximate: false``, or the planner's choice) reads the float32 rows.

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
from typing import Any, cast

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


#: 3: + the residuals (<field>.<n>.r4); 2: int8 codes made here; 1: codes usearch made from float32 (× 127)
SNAPSHOT_FORMAT = "usearch-i8-ip-3"
RESIDUAL_STEPS = 16  # a residual counts sixteenths of a code step, stored as 0..15 (that is -8..7), two a byte
ADD_CHUNK = 65_536  # rows coded and added at a time


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read in 16 MiB blocks."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(16 * 1024 * 1024):
            crc = zlib.crc32(block, crc)
    return crc


class AnnIndex:
    """An HNSW graph over slots ``0 .. len-1`` of one field, and the rows' residuals; thread-safe; snapshots to
    ``<dir>/<field>.<n>.usearch`` with the residuals in ``<field>.<n>.r4`` and its quantisation scale and
    checksums in ``<field>.<n>.json``."""

    def __init__(self, dim: int, params: HnswParams, scale: float | None = None) -> None:
        import onnxruntime  # noqa: F401  loaded first: importing it after usearch segfaults (ORT 1.32, usearch 2.26)
        from usearch.compiled import ScalarKind
        from usearch.index import Index

        self.dim, self.params = dim, params
        self.scale = scale
        self.is_view = False
        self._covered = 0
        self._lock = threading.Lock()
        self._index = Index(ndim=dim, metric="ip", dtype="i8", connectivity=params.max_links_per_node,
                            expansion_add=params.neighbors_to_explore_at_insert, expansion_search=64)
        self._i8 = ScalarKind.I8
        self._residuals = np.zeros((0, (dim + 1) // 2), dtype=np.uint8)  # capacity ≥ covered rows

    def __len__(self) -> int:
        return self._covered

    def _codes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int8 codes of the normalised rows (components × scale × 127, rounded, saturated at ±127) and their
        packed 4-bit residuals."""
        x = np.array(rows, dtype=np.float32, ndmin=2)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.where(norms > 0, norms, 1.0)
        if self.scale is None:  # from the first rows: the largest components (ignoring 1 in 100,000) fill the range
            top = float(np.quantile(np.abs(x), 0.99999)) if x.size else 0.0
            self.scale = 1.0 / max(top, 2.5 / self.dim ** 0.5)
        x *= np.float32(127.0 * self.scale)
        codes = np.clip(np.rint(x), -127.0, 127.0)
        x -= codes
        x *= RESIDUAL_STEPS
        np.rint(x, out=x)
        np.clip(x, -RESIDUAL_STEPS // 2, RESIDUAL_STEPS // 2 - 1, out=x)
        x += RESIDUAL_STEPS // 2
        nibbles = x.astype(np.uint8)
        if self.dim % 2:
            nibbles = np.concatenate([nibbles, np.full((len(nibbles), 1), RESIDUAL_STEPS // 2, np.uint8)], axis=1)
        packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
        return codes.astype(np.int8), packed

    def extend(self, rows: np.ndarray, upto: int) -> None:
        """Add ``rows[len(self):upto]`` (the slots past the ones covered), using all cores."""
        with self._lock:
            if upto > self._covered and self.is_view:
                raise RuntimeError("a memory-mapped graph cannot grow; load it without view")
            if upto > len(self._residuals):  # room for them, doubling: readers keep the array they hold
                grown = np.empty((max(upto, 2 * len(self._residuals)), self._residuals.shape[1]), np.uint8)
                grown[: self._covered] = self._residuals[: self._covered]
                self._residuals = grown
            for start in range(self._covered, upto, ADD_CHUNK):  # chunks: codes, not a float32 copy, in memory
                end = min(start + ADD_CHUNK, upto)
                codes, residuals = self._codes(rows[start:end])
                self._residuals[start:end] = residuals
                self._index.add(np.arange(start, end, dtype=np.uint64), codes)
                self._covered = end

    def _query_code(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32)
        norm = float(np.sqrt(q @ q))
        q = q * np.float32(127.0 * (self.scale or 1.0) / norm if norm > 0 else 0.0)  # as _codes, inline: ~3 µs less
        np.rint(q, out=q)
        np.minimum(q, 127.0, out=q)
        np.maximum(q, -127.0, out=q)
        return q.astype(np.int8)[None]

    def search(self, query: np.ndarray, count: int, ef: int, allow: np.ndarray | None = None) -> np.ndarray:
        """The beam's candidate slots (at least ``count`` when the graph has them), nearest first by the graph's
        approximate distance. ``ef`` is the beam (Vespa: targetHits + exploreAdditionalHits); ``allow`` a bitmap
        (``np.packbits(..., bitorder="little")``) of the slots that may be returned."""
        width = min(max(ef, count), self._covered)
        if width <= 0:
            return np.zeros(0, dtype=np.int64)
        code = self._query_code(query)
        with self._lock:  # usearch's compiled index directly: the Python wrapper's result objects cost ~10 µs
            self._index.expansion_search = width  # type: ignore[misc]
            found, _, counts, _, _ = self._index._compiled.search_many(code, count=width, exact=False, threads=1)
        keys = found[0, : counts[0]].astype(np.int64)
        if allow is not None:
            keys = keys[keys < len(allow) * 8]
            keys = keys[(allow[keys >> 3] >> (keys & 7)) & 1 == 1]
        return keys

    def cosines(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Cosines of ``query`` with the rows at ``slots`` (covered ones), from their codes and residuals: within
        about 1e-4 of the float32 rows' (0 for a zero row, or a zero query)."""
        q = np.asarray(query, dtype=np.float32)
        norm = float(np.sqrt(q @ q))
        if len(slots) == 0 or norm == 0:
            return np.zeros(len(slots), dtype=np.float32)
        with self._lock:  # the codes' bytes, joined: ~3x faster than stacking the arrays usearch returns
            rows = cast("tuple[bytes, ...]", self._index._compiled.get_many(slots.astype(np.uint64), self._i8))
        codes = np.frombuffer(b"".join(rows), dtype=np.int8).reshape(len(slots), self.dim)
        packed = self._residuals[slots]
        steps = q * np.float32(1.0 / RESIDUAL_STEPS)  # a nibble's weight; the nibbles count from -8
        low, high = steps[0::2], steps[1::2]
        if len(high) < packed.shape[1]:  # an odd dimension: the last byte's high nibble is padding
            high = np.append(high, np.float32(0.0))
        # mixed-type products (int8 and uint8 against float32) without float copies of the codes
        dots: np.ndarray = codes @ q + (packed & 15) @ low + (packed >> 4) @ high
        dots -= np.float32((RESIDUAL_STEPS // 2) * float(steps.sum()))
        dots *= np.float32(1.0 / (127.0 * (self.scale or 1.0) * norm))
        return dots

    def save(self, folder: Path, field: str) -> Path:
        """Write a snapshot atomically, named by the slot count it covers; older snapshots are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            covered = self._covered
            target = folder / f"{field}.{covered}.usearch"
            tmp = folder / f".{field}.{covered}.tmp"
            self._index.save(str(tmp))
            residuals = self._residuals[:covered]
        meta = target.with_suffix(".json")
        residual_path, residual_tmp = target.with_suffix(".r4"), folder / f".{field}.{covered}.r4.tmp"
        residuals.tofile(residual_tmp)
        meta_tmp = folder / f".{field}.{covered}.json.tmp"
        meta_tmp.write_text(json.dumps({"format": SNAPSHOT_FORMAT, "scale": self.scale, "covered": covered,
                                        "crc32": file_crc32(tmp), "residuals_crc32": file_crc32(residual_tmp)}))
        os.replace(meta_tmp, meta)
        os.replace(residual_tmp, residual_path)
        os.replace(tmp, target)
        for old in [*folder.glob(f"{field}.*.usearch"), *folder.glob(f"{field}.*.json"), *folder.glob(f"{field}.*.r4")]:
            if old not in (target, meta, residual_path):
                old.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, folder: Path, field: str, dim: int, params: HnswParams, *, view: bool = False,
             max_covered: int | None = None) -> AnnIndex | None:
        """The newest readable snapshot covering at most ``max_covered`` slots, or None (caller rebuilds).

        ``view`` memory-maps the files instead of reading them (instant, shared between processes; read-only)."""
        snapshots = []
        for path in folder.glob(f"{field}.*.usearch"):
            label = path.name[len(field) + 1: -len(".usearch")]
            if label.isdigit() and (max_covered is None or int(label) <= max_covered):
                snapshots.append((int(label), path))
        for covered, path in sorted(snapshots, reverse=True):
            try:  # another format (older clipseek), a torn or damaged file: try an older one, else rebuild
                meta = snapshot_meta(path)
                if meta is None or meta.get("covered") != covered:
                    continue  # usearch would crash on a damaged file: never load one
                index = cls(dim, params, scale=float(meta["scale"]))
                width = index._residuals.shape[1]
                residuals: np.ndarray
                if view:
                    index._index.view(str(path))
                    residuals = np.memmap(path.with_suffix(".r4"), dtype=np.uint8, mode="r").view(np.ndarray)
                else:
                    index._index.load(str(path))
                    residuals = np.fromfile(path.with_suffix(".r4"), dtype=np.uint8)
                if len(residuals) != covered * width:
                    continue
                index._residuals = residuals.reshape(covered, width)
            except Exception:
                continue
            if index._index.ndim == dim and len(index._index) == covered:
                index.is_view, index._covered = view, covered
                return index
        return None


def snapshot_meta(path: Path) -> dict[str, Any] | None:
    """The snapshot's meta when the snapshot is of this format and its files match their checksums; else None."""
    try:
        meta: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
        sound = (meta.get("format") == SNAPSHOT_FORMAT and meta.get("crc32") == file_crc32(path)
                 and meta.get("residuals_crc32") == file_crc32(path.with_suffix(".r4")))
    except (OSError, ValueError):
        return None
    return meta if sound else None
