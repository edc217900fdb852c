"""CRC-32 checks of the vector rows, fast enough for a million rows at every open.

Each row of a vector file has its own CRC-32 (zlib's, IEEE 802.3) in the ``.crc`` file, so a damaged row can be
named and only its document re-indexed. Checking them one call per row costs about 1.5 µs a row in Python (1.5 s at
a million rows); instead rows are checked a block at a time, on all cores:

- a block's CRC is one call over its bytes, by ISA-L (``isal``: the same CRC-32 as zlib's, about 3.5× faster
  with its carry-less-multiply kernels, ~12 GB/s a core here against zlib's ~3.4; and it releases the GIL, so
  threads run in parallel, which zlib's did not measurably do here);
- the CRC the block should have follows from its rows' stored CRCs, because a CRC-32 of a concatenation is
  linear in the parts (zlib's ``crc32_combine``): ``crc(a + b) = shift(crc(a), len(b)) ^ crc(b)``, where
  ``shift`` multiplies by x^(8·len(b)) modulo the CRC polynomial. For a fixed row length that is one 32×32
  GF(2) matrix, applied here as four byte tables, to all blocks at once in numpy;
- only a block that disagrees is checked row by row, to name its damaged rows.
"""

from __future__ import annotations

import functools
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from isal.isal_zlib import crc32

POLYNOMIAL = 0xEDB88320  # CRC-32 (zlib, IEEE 802.3), bit-reflected
BLOCK_ROWS = 256  # rows checked by one call (512 KiB of 512-dim float32 rows)


def row_crcs(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (a C-contiguous [n, d] array), as little-endian uint32."""
    width = rows.shape[1] * rows.itemsize if rows.ndim == 2 else 0
    view = rows.data.cast("B") if rows.size else memoryview(b"")
    return np.fromiter((crc32(view[i * width: (i + 1) * width]) for i in range(len(rows))),
                       dtype="<u4", count=len(rows))


@functools.lru_cache(maxsize=8)
def _byte_table() -> np.ndarray:
    """The CRC register after one zero byte, for each value of its low byte (the classic table)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(POLYNOMIAL), table >> 1).astype(np.uint32)
    return table


def _apply(images: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A GF(2)-linear map on 32-bit registers, given by the ``images`` of its 32 bits, applied to ``values``."""
    out = np.zeros(len(values), np.uint32)
    for bit in range(32):
        out ^= np.where((values >> np.uint32(bit)) & 1, images[bit], np.uint32(0)).astype(np.uint32)
    return out


@functools.lru_cache(maxsize=8)
def shift_tables(nbytes: int) -> np.ndarray:
    """Four tables [4, 256]: ``shift(c) = t[0][c & 255] ^ t[1][c >> 8 & 255] ^ t[2][...] ^ t[3][c >> 24]`` is
    ``c`` carried over ``nbytes`` more bytes of zeros, the first term of ``crc32_combine``. Made by squaring the
    one-byte map (a few ms at open, not one step per byte)."""
    table = _byte_table()
    bits = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    step = table[bits & 0xFF] ^ (bits >> 8)  # the images of the register's bits after one zero byte
    images = bits  # after none
    while nbytes:
        if nbytes & 1:
            images = _apply(step, images)
        step = _apply(step, step)
        nbytes >>= 1
    values = np.arange(256, dtype=np.uint32)
    return np.stack([_apply(images, values << np.uint32(8 * k)) for k in range(4)])


def combine(crcs: np.ndarray, row_bytes: int) -> np.ndarray:
    """The CRC-32 of each block of BLOCK_ROWS consecutive rows (the last may be shorter), from the rows' CRCs."""
    tables = shift_tables(row_bytes)
    n = len(crcs)
    full = n // BLOCK_ROWS
    parts = [crcs[: full * BLOCK_ROWS].reshape(full, BLOCK_ROWS).astype(np.uint32)]
    if n > full * BLOCK_ROWS:
        tail = np.zeros(BLOCK_ROWS, np.uint32)
        tail[: n - full * BLOCK_ROWS] = crcs[full * BLOCK_ROWS:]
        parts.append(tail[None])
    grid = np.concatenate(parts)
    counts = np.full(len(grid), BLOCK_ROWS)
    if n > full * BLOCK_ROWS:
        counts[-1] = n - full * BLOCK_ROWS
    acc = grid[:, 0].copy()
    for j in range(1, BLOCK_ROWS):
        more = counts > j
        if not more.any():
            break
        shifted = (tables[0][acc & 0xFF] ^ tables[1][(acc >> 8) & 0xFF]
                   ^ tables[2][(acc >> 16) & 0xFF] ^ tables[3][acc >> 24])
        acc = np.where(more, shifted ^ grid[:, j], acc)
    return acc


def bad_rows(rows: np.ndarray, stored: np.ndarray, on_block: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Indexes of the rows (a C-contiguous [n, d] array) whose CRC-32 differs from ``stored`` (one per row).

    Blocks are checked on all cores. ``on_block(start, end)`` is called for each block of rows from the same
    threads (the caller's other work on the rows, e.g. their norms, while they are in the cache)."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, np.int64)
    expected = combine(np.asarray(stored, dtype=np.uint32), rows.shape[1] * rows.itemsize)
    data = rows.data.cast("B")
    row_bytes = rows.shape[1] * rows.itemsize

    def check(block: int) -> bool:
        start, end = block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, n)
        if on_block is not None:
            on_block(start, end)
        return crc32(data[start * row_bytes: end * row_bytes]) == int(expected[block])

    blocks = range(len(expected))
    workers = min(os.cpu_count() or 1, len(expected))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            sound = list(pool.map(check, blocks))
    else:
        sound = [check(b) for b in blocks]
    found = [np.zeros(0, np.int64)]
    for block in np.flatnonzero(~np.asarray(sound, dtype=bool)):
        start, end = int(block) * BLOCK_ROWS, min((int(block) + 1) * BLOCK_ROWS, n)
        found.append(np.flatnonzero(row_crcs(rows[start:end]) != stored[start:end]) + start)
    return np.concatenate(found).astype(np.int64)


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read through a memory map 16 MiB at a time.

    Mapped, not read into buffers: a 16 MiB buffer freed in a worker thread stays in that thread's malloc arena
    (glibc raises its mmap threshold after the first one), which left ~50 MiB resident after an open."""
    crc = 0
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return 0
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                for at in range(0, len(view), 16 * 1024 * 1024):
                    crc = crc32(view[at: at + 16 * 1024 * 1024], crc)
            finally:
                view.release()
    return crc
