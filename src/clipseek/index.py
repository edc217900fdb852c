"""Deprecated: the HNSW graph module is :mod:`clipseek.hnsw` (this name was too close to :mod:`clipseek.indexer`)."""

from __future__ import annotations

import warnings

from .checksums import file_crc32
from .hnsw import SNAPSHOT_FORMAT, AnnIndex, HnswParams, closeness

warnings.warn("clipseek.index is now clipseek.hnsw; import from there", DeprecationWarning, stacklevel=2)

__all__ = ["SNAPSHOT_FORMAT", "AnnIndex", "HnswParams", "closeness", "file_crc32"]
