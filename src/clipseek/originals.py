"""Which file a document's image may be served from, and the check made each time it is.

``clipseek index`` records, in the document's ``extra["file"]``, the path it read (as bytes), the file's size and
its modification time in nanoseconds, and records the real path of every folder it indexed in the collection
(:meth:`Collection.indexed_roots`). The document API cannot write ``extra`` (a put replaces it, an update keeps
the indexer's), so a ``path`` set through it is never served.

A file is served only when, at the moment it is opened (``O_NOFOLLOW`` on the resolved path, then ``fstat`` on
the open descriptor, so a link swapped in between is caught): its resolved real path lies under an indexed root,
it is a regular file, and its size and mtime are the ones indexed. A link in an indexed folder retargeted after
indexing, a file replaced or edited since, or a device or FIFO is refused.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import Any, Iterable

FILE_KEY = "file"


def file_record(raw: bytes, size: int, mtime_ns: int) -> dict[str, Any]:
    """What the indexer stores about the file it read (the ``extra["file"]`` of a document)."""
    return {"path": base64.b64encode(raw).decode("ascii"), "size": size, "mtime_ns": mtime_ns}


def indexed_file(extra: dict[str, Any]) -> tuple[bytes, int, int] | None:
    """(path, size, mtime_ns) the indexer recorded, or None for a document it did not write."""
    record = extra.get(FILE_KEY)
    if not isinstance(record, dict):
        return None
    try:
        return base64.b64decode(record["path"], validate=True), int(record["size"]), int(record["mtime_ns"])
    except (KeyError, TypeError, ValueError):
        return None


def under(path: bytes, roots: Iterable[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def open_original(extra: dict[str, Any], roots: Iterable[bytes]) -> tuple[int, os.stat_result] | None:
    """An open descriptor (and its stat) of the document's indexed file if it may be served, else None.

    The caller closes the descriptor."""
    record = indexed_file(extra)
    if record is None:
        return None
    raw, size, mtime_ns = record
    try:
        real = os.path.realpath(raw)
    except (OSError, ValueError):
        return None
    if not under(real, list(roots)):
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns:
            return fd, st
    except OSError:
        pass
    os.close(fd)
    return None
