"""The collection's SQLite file and vector files: a versioned, crash-safe layout.

Layout of a collection folder::

    collection.sqlite         documents, vector-field registry, (doc, field) → slot, meta  (WAL mode)
    vectors/<field>.f32       float32 rows, append-only; row = slot
    vectors/<field>.norm      float32 L2 norm of each row (derived; checked against the rows at open)
    vectors/<field>.crc       uint32 CRC-32 of each row's bytes, checked at open: a garbled row is an error
                              naming the field and slots, never a silently different ranking
    ann/<field>.<n>.faiss     HNSW snapshot covering slots < n, + <n>.r4 (4-bit residuals) and <n>.json (format,
                              int8 scale, CRC-32s); caught up on open, rebuilt when missing, of another format or
                              damaged

A feed writes new vector rows first (fsync), then commits one SQLite transaction that points documents at
them. A crash before the commit leaves only unreferenced rows past ``next_slot``, which the next write
overwrites: the collection always opens and agrees with itself, losing at most the unacknowledged batch.
A write first checks that the files hold every committed row: a truncated file is reported, never padded
with zeros by the next append. ``clipseek check`` verifies all of it (:mod:`clipseek.check`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from . import checksums
from .errors import CollectionDamagedError, CollectionVersionError, NotACollectionError
from .schema import BY_NAME, PHOTO_ATTRIBUTES

DB_FILE = "collection.sqlite"
FORMAT_VERSION = 3



def _run(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one (``executescript`` would commit the migration's transaction early)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migration_1(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE documents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            docid TEXT NOT NULL UNIQUE,
            image_file_name TEXT, path TEXT, size INTEGER, mtime REAL, content_hash TEXT,
            width INTEGER, height INTEGER, format TEXT, indexed_at REAL,
            extra TEXT
        );
        CREATE INDEX documents_path ON documents(path);
        CREATE INDEX documents_hash ON documents(content_hash);
        CREATE TABLE vector_fields (
            name TEXT PRIMARY KEY, model TEXT NOT NULL, dim INTEGER NOT NULL,
            next_slot INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL
        );
        CREATE TABLE vectors (
            doc INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            field TEXT NOT NULL REFERENCES vector_fields(name),
            slot INTEGER NOT NULL,
            PRIMARY KEY (doc, field)
        );
        """
    )


def _migration_2(db: sqlite3.Connection) -> None:
    """Each document keeps the namespace it was fed under (Vespa's ``id:<namespace>:image_search::<id>``);
    NULL means the collection's own namespace."""
    db.execute("ALTER TABLE documents ADD COLUMN namespace TEXT")


def _migration_3(db: sqlite3.Connection) -> None:
    """What a photo's EXIF says (schema.PHOTO_ATTRIBUTES: date taken, camera, lens, place); NULL for documents
    indexed before, until `clipseek index` sees their files change."""
    for name in PHOTO_ATTRIBUTES:
        db.execute(f"ALTER TABLE documents ADD COLUMN {name} {BY_NAME[name].sql}")
    db.execute("CREATE INDEX documents_taken ON documents(taken)")


#: Numbered migrations: MIGRATIONS[i] takes a database from version i to i + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2, _migration_3]
assert len(MIGRATIONS) == FORMAT_VERSION


def connect(folder: Path, *, create: bool, readonly: bool = False,
            meta: Mapping[str, object] | None = None) -> sqlite3.Connection:
    """Open (or create) the collection database, migrating it to this code's format version.

    A writer migrates and stores ``meta`` (keys not yet set) in one transaction, so another process never sees
    a half-made collection: it sees format 0 and waits for the write lock, or the finished one.
    """
    path = folder / DB_FILE
    if not path.is_file():
        if not create:
            reason = "folder does not exist" if not folder.exists() else f"no {DB_FILE} in it"
            raise NotACollectionError(folder, reason)
        folder.mkdir(parents=True, exist_ok=True)
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        db.close()
        raise NotACollectionError(folder, f"{DB_FILE} is not a SQLite database: {exc}") from exc
    if version > FORMAT_VERSION:
        db.close()
        raise CollectionVersionError(folder, version, FORMAT_VERSION)
    if not readonly:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            if version < FORMAT_VERSION or any(get_meta(db, key) is None for key in meta or {}):
                _migrate(db, folder, meta or {})  # else nothing to write: readers see no commit
        except BaseException:
            db.close()
            raise
    elif version < FORMAT_VERSION:  # a reader never writes: not even a migration, which needs the write lock
        deadline = time.monotonic() + 30
        while _writer_active(folder) and time.monotonic() < deadline:  # a creator is migrating it: wait
            time.sleep(0.05)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= FORMAT_VERSION:
                return db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version >= FORMAT_VERSION:
            return db
        db.close()
        raise NotACollectionError(folder, f"it has format {version} and needs a migration to {FORMAT_VERSION}, which a "
                                          "read-only open never does: open it once for writing, e.g. with "
                                          "`clipseek index` or `clipseek check --repair`")
    return db


def _writer_active(folder: Path) -> bool:
    """Whether another process holds the collection's write lock (``write.lock``, flock'ed by writers)."""
    try:
        fd = os.open(folder / "write.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _migrate(db: sqlite3.Connection, folder: Path, meta: Mapping[str, object]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:  # read the version again under the write lock: another process may have migrated meanwhile
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT_VERSION:
            raise CollectionVersionError(folder, version, FORMAT_VERSION)
        for target in range(version, FORMAT_VERSION):
            MIGRATIONS[target](db)
        for key, value in meta.items():
            if get_meta(db, key) is None:
                set_meta(db, key, value)
        if version < FORMAT_VERSION:
            db.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def checkpoint_wal(db: sqlite3.Connection, folder: Path) -> None:
    """Move the WAL's pages into the main file and truncate the WAL, so that ``collection.sqlite`` alone holds
    the data (a backup that copies just it copies everything). Skipped quietly while readers hold old pages,
    and when the WAL is empty (a checkpoint would still make every reader reload)."""
    try:
        if os.path.getsize(folder / f"{DB_FILE}-wal") == 0:
            return
    except OSError:
        return
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError:
        pass


def get_meta(db: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(db: sqlite3.Connection, key: str, value: object) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
               (key, text))


def _write_at(path: Path, payload: np.ndarray, offset: int) -> None:
    """Write ``payload``'s bytes at ``offset`` of ``path`` (created if missing) and fsync."""
    with open(path, "r+b" if path.exists() else "w+b") as fh:
        fh.seek(offset)
        fh.write(payload.tobytes())
        fh.flush()
        os.fsync(fh.fileno())


class VectorFile:
    """Append-only float32 rows on disk, read through a memory map; ``rows`` is the committed count."""

    def __init__(self, path: Path, dim: int, rows: int) -> None:
        self.path, self.dim, self.rows = path, dim, rows
        self._map: np.ndarray | None = None

    @property
    def row_bytes(self) -> int:
        return self.dim * 4

    @property
    def norm_path(self) -> Path:
        return self.path.with_suffix(".norm")

    @property
    def crc_path(self) -> Path:
        return self.path.with_suffix(".crc")

    def crc_rows(self) -> int:
        """Rows the checksum file covers."""
        return self.crc_path.stat().st_size // 4 if self.crc_path.exists() else 0

    def stored_rows(self) -> int:
        """Whole rows the vector file holds (committed or not)."""
        try:
            return self.path.stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0

    def write(self, first_slot: int, vectors: np.ndarray) -> np.ndarray:
        """Write rows (their norms and checksums) from ``first_slot`` and fsync; they count once the caller
        commits. Refuses when the file holds fewer than ``first_slot`` rows (it was truncated)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        have = self.stored_rows()
        if have < first_slot:
            raise CollectionDamagedError(self.path.parent.parent, [
                f"{self.path.name} holds {have} rows but {first_slot} are committed (the file was truncated)"])
        crc_have = self.crc_rows()
        data = np.ascontiguousarray(vectors, dtype="<f4")
        norms: np.ndarray = np.linalg.norm(data, axis=1).astype("<f4")
        crcs = self.checksums_of(data)
        if crc_have < first_slot:  # a collection from before checksums: cover the rows before these first
            crcs = np.concatenate([self.checksums(crc_have, first_slot), crcs])
        _write_at(self.path, data, first_slot * self.row_bytes)
        _write_at(self.norm_path, norms, first_slot * 4)
        _write_at(self.crc_path, crcs, min(crc_have, first_slot) * 4)
        return norms

    @staticmethod
    def checksums_of(rows: np.ndarray) -> np.ndarray:
        """CRC-32 of each row's little-endian float32 bytes."""
        return checksums.row_crcs(np.ascontiguousarray(rows, dtype="<f4"))

    def checksums(self, start: int, end: int) -> np.ndarray:
        """CRC-32 of rows ``start..end`` as the vector file holds them now."""
        if end <= start:
            return np.zeros(0, dtype="<u4")
        rows = np.memmap(self.path, dtype="<f4", mode="r", offset=start * self.row_bytes, shape=(end - start, self.dim))
        return self.checksums_of(rows)

    def stored_checksums(self, start: int, end: int) -> np.ndarray:
        """The checksums the ``.crc`` file holds for rows ``start..end`` (fewer where it ends early)."""
        have = self.crc_rows()
        if have <= start:
            return np.zeros(0, dtype="<u4")
        return np.fromfile(self.crc_path, dtype="<u4", count=min(have, end) - start, offset=start * 4)

    def verify(self, start: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Check committed rows ``start..rows``: (their norms computed from the data, the slots whose checksum
        disagrees, how many of the rows had a stored checksum). Raises when the file holds too few rows."""
        have = self.stored_rows()
        if have < self.rows:
            raise CollectionDamagedError(self.path.parent.parent, [
                f"{self.path.name} holds {have} rows but {self.rows} are committed (the file was truncated)"])
        if self.rows <= start:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), 0
        with self.scan() as all_rows:
            return self._verify(all_rows[start: self.rows], start)

    def _verify(self, rows: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
        stored = self.stored_checksums(start, self.rows)
        norms = np.empty(len(rows), np.float32)

        def norms_of(a: int, b: int) -> None:  # in the checking threads, while the block is in the cache
            with np.errstate(over="ignore", invalid="ignore"):  # a garbled row may overflow; its checksum says so
                norms[a:b] = np.linalg.norm(rows[a:b], axis=1)

        bad = checksums.bad_rows(rows[: len(stored)], stored, on_block=norms_of)
        if len(stored) < len(rows):  # rows without a stored checksum (a collection from before checksums)
            norms_of(len(stored), len(rows))
        return norms, bad + start, len(stored)

    def rewrite_derived(self, start: int, norms: np.ndarray) -> None:
        """Rewrite rows ``start..`` of the norm file, and checksums the crc file lacks, from the data (a writer's
        repair of derived files)."""
        have_crc = self.crc_rows()
        if len(norms):
            _write_at(self.norm_path, norms.astype("<f4"), start * 4)
        if have_crc < self.rows:
            _write_at(self.crc_path, self.checksums(have_crc, self.rows), have_crc * 4)

    def norms(self, start: int) -> np.ndarray:
        """Norms of committed rows from ``start``: read from the norm file, computed where it falls short."""
        have = self.norm_path.stat().st_size // 4 if self.norm_path.exists() else 0
        stored = np.fromfile(self.norm_path, dtype="<f4", count=max(0, min(have, self.rows) - start),
                             offset=start * 4) if have > start else np.zeros(0, np.float32)
        done = start + len(stored)
        if done < self.rows:
            stored = np.concatenate([stored, np.linalg.norm(self.array()[done:], axis=1).astype(np.float32)])
        return np.asarray(stored, dtype=np.float32)

    def commit(self, rows: int) -> None:
        self.rows = rows

    @contextlib.contextmanager
    def scan(self) -> Iterator[np.ndarray]:
        """The committed rows through a map of their own, unmapped at the end: a pass over every row (checking
        them, building a graph) leaves none of them in the process's resident memory, as :meth:`array`'s
        long-lived map would (searches then hold only the rows they read)."""
        if self.rows == 0:
            yield np.zeros((0, self.dim), np.float32)
            return
        mapped = np.memmap(self.path, dtype="<f4", mode="r", shape=(self.rows, self.dim))
        try:
            yield mapped.view(np.ndarray)
        finally:
            mapped._mmap.close()  # type: ignore[attr-defined]

    def array(self) -> np.ndarray:
        """A read-only ``[rows, dim]`` view of the committed rows (re-mapped when the file grew)."""
        if self.rows == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._map is None or len(self._map) < self.rows:
            size = self.path.stat().st_size // self.row_bytes
            # a plain ndarray over the map: memmap's subclass hooks cost more than a small gather
            self._map = np.memmap(self.path, dtype="<f4", mode="r", shape=(size, self.dim)).view(np.ndarray)
        return self._map[: self.rows]


def now() -> float:
    return time.time()
