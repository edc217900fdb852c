"""Parquet shards of embeddings (what ``clipseek embed`` writes), and reading them into a collection or Vespa.

A shard folder holds ``embeddings.json`` (format, model, the model its image vectors belong to, field, dim) and
``shard-NNNNNN.parquet`` files, one row per item:

    path          string     the file's path, or the URL (text; undecodable bytes as \\xNN escapes)
    path_bytes    binary     the exact path bytes or URL: the document id is derived from it
    content_hash  string     SHA-256 of the bytes read
    size          int64      bytes read
    mtime         float64    local files: modification time (seconds), as ``clipseek index`` records it
    mtime_ns      int64      local files: the same in nanoseconds
    width, height int32      upright size before any downscaling
    format        string     container format (JPEG, PNG, ...)
    error         string     why the item has no vector (the indexer's reasons), else null
    vector        fixed_size_list<float32>[dim], L2-normalised; null when ``error`` is set

A shard file is written to a temporary name, synced and renamed, so one that exists is complete; temporary
files are ignored by readers and removed by the next writer (who holds ``write.lock``). Every shard also carries
the manifest in its Parquet metadata.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import ClipseekError

MANIFEST = "embeddings.json"
FORMAT = "clipseek-embeddings/1"
PREFIX, SUFFIX = "shard-", ".parquet"
PARQUET_INSTALL = "pip install 'clipseek[parquet]' (or 'clipseek[ray]')"


class ShardError(ClipseekError):
    pass


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ShardError(f"Parquet shards need pyarrow, which is not installed: {PARQUET_INSTALL}") from exc


@dataclass
class Row:
    """One item of a shard, without its vector."""

    path: str
    path_bytes: bytes
    content_hash: str | None = None
    size: int | None = None
    mtime: float | None = None
    mtime_ns: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    error: str | None = None

    @classmethod
    def columns(cls, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        """Rows as typed numpy columns for a Ray Data batch: every block gets the same Arrow types, since a
        missing value is a sentinel (``NULL_INT``, NaN, "") rather than None."""
        out: dict[str, np.ndarray] = {}
        for f in fields(cls):
            values = [getattr(r, f.name) for r in rows]
            if f.name in _INT_FIELDS:
                out[f.name] = np.array([NULL_INT if v is None else v for v in values], np.int64)
            elif f.name == "mtime":
                out[f.name] = np.array([np.nan if v is None else v for v in values], np.float64)
            else:
                column = np.empty(len(rows), dtype=object)
                column[:] = [(b"" if f.name == "path_bytes" else "") if v is None else v for v in values]
                out[f.name] = column
        return out

    @classmethod
    def from_columns(cls, batch: dict[str, Any]) -> list[Row]:
        """The rows of :meth:`columns`' form (column by column: the driver reads every row of a Ray run)."""
        columns = []
        for f in fields(cls):
            values = batch[f.name]
            values = values.tolist() if isinstance(values, np.ndarray) else list(values)
            if f.name in _INT_FIELDS:
                values = [None if v is None or v == NULL_INT else int(v) for v in values]
            elif f.name == "mtime":
                values = [None if v is None or v != v else float(v) for v in values]
            elif f.name == "path_bytes":
                values = [bytes(v) for v in values]
            else:
                values = [v if v else None for v in values]
            columns.append(values)
        return [cls(*values) for values in zip(*columns)]


NULL_INT = np.iinfo(np.int64).min
_INT_FIELDS = {"size", "mtime_ns", "width", "height"}


def _schema(dim: int, manifest: dict[str, Any]) -> Any:
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("path_bytes", pa.binary()), ("content_hash", pa.string()),
                      ("size", pa.int64()), ("mtime", pa.float64()), ("mtime_ns", pa.int64()),
                      ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
                      ("error", pa.string()), ("vector", pa.list_(pa.float32(), dim))],
                     metadata={b"clipseek": json.dumps(manifest).encode()})


class ShardSet:
    """A folder of shards: its manifest, which items it holds, writing one more, reading them all."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def image_model(self) -> str:
        return str(self.manifest["image_model"])

    @property
    def field(self) -> str:
        return str(self.manifest["field"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @classmethod
    def open(cls, folder: Path, *, model: str | None = None, image_model: str | None = None,
             field: str | None = None, dim: int | None = None, create: bool = False) -> ShardSet:
        """Open ``folder``; with ``create``, make it for ``model`` (an existing one must be for the same)."""
        require_pyarrow()
        folder = Path(folder)
        path = folder / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
                if manifest.get("format") != FORMAT:
                    raise ShardError(f"{path}: format {manifest.get('format')!r}, not {FORMAT!r}")
                for key in ("model", "image_model", "field", "dim"):
                    manifest[key]  # noqa: B018 (a KeyError is a damaged manifest)
            except (ValueError, KeyError) as exc:
                raise ShardError(f"{path} is damaged ({exc}): it is not a clipseek shard folder") from exc
            if model is not None and (manifest["image_model"] != image_model or manifest["dim"] != dim):
                raise ShardError(f"{folder} holds vectors of {manifest['image_model']}, not {image_model}: "
                                 f"use --model {manifest['model']} to continue it, or another --out")
            return cls(folder, manifest)
        if not create:
            what = "does not exist" if not folder.exists() else f"has no {MANIFEST}"
            raise ShardError(f"{folder} {what}: it is not a folder of `clipseek embed` shards")
        if folder.is_dir() and any(folder.iterdir()):
            raise ShardError(f"{folder} is not empty and holds no {MANIFEST}: give `--out` a new or empty folder")
        assert model and image_model and field and dim
        manifest = {"format": FORMAT, "model": model, "image_model": image_model, "field": field, "dim": dim,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return cls(folder, manifest)

    def lock(self) -> int:
        """Hold ``DIR/write.lock`` (flock) for a writing run: a second `clipseek embed` on the same folder would
        number its shards like this one's and write items twice. Released when the process ends."""
        import fcntl

        fd = os.open(self.folder / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ShardError(f"{self.folder} is being written by {holder} (another `clipseek embed`): wait for it "
                             "to finish, or give this run another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        for left in self.folder.glob(f"{PREFIX}*{SUFFIX}.tmp"):  # a killed writer's; only the lock holder may
            left.unlink(missing_ok=True)
        return fd

    def files(self) -> list[Path]:
        """The complete shards, in order (a shard being written is a temporary file, not listed)."""
        return [entry for entry in sorted(self.folder.iterdir()) if entry.name.startswith(PREFIX)
                and entry.name.endswith(SUFFIX) and entry.name[len(PREFIX):-len(SUFFIX)].isdigit()]

    def next_number(self) -> int:
        files = self.files()
        return int(files[-1].name[len(PREFIX):-len(SUFFIX)]) + 1 if files else 0

    def held_items(self) -> set[bytes]:
        """The path bytes of every item a complete shard holds (reads only that column)."""
        import pyarrow.parquet as pq

        held: set[bytes] = set()
        for path in self.files():
            held.update(pq.read_table(path, columns=["path_bytes"]).column(0).to_pylist())
        return held

    def write(self, number: int, rows: Sequence[Row], vectors: Sequence[np.ndarray | None]) -> Path:
        """Write shard ``number`` atomically: a temporary file, synced, renamed."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema(self.dim, self.manifest)
        columns: dict[str, list[Any]] = {f.name: [getattr(r, f.name) for r in rows] for f in fields(Row)}
        flat = np.zeros((len(rows), self.dim), np.float32)
        valid = np.array([v is not None for v in vectors], dtype=bool)
        for k, v in enumerate(vectors):
            if v is not None:
                flat[k] = v
        values = pa.array(flat.reshape(-1), pa.float32())
        vector = pa.FixedSizeListArray.from_arrays(values, self.dim, mask=pa.array(~valid))
        arrays = [pa.array(columns[f.name], schema.field(f.name).type) for f in fields(Row)] + [vector]
        table = pa.Table.from_arrays(arrays, schema=schema)
        final = self.folder / f"{PREFIX}{number:06d}{SUFFIX}"
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            # vectors are incompressible floats: dictionary-encoding or compressing them costs time for nothing
            others = [name for name in schema.names if name != "vector"]
            pq.write_table(table, fh, compression={**{name: "zstd" for name in others}, "vector": "none"},
                           use_dictionary=others)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def __len__(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files())

    def rows(self) -> Iterator[tuple[Row, np.ndarray | None]]:
        """Every item of every complete shard: its row and its vector (None when it failed)."""
        import pyarrow.parquet as pq

        for path in self.files():
            table = pq.read_table(path)
            vectors = table.column("vector")
            flat = vectors.combine_chunks()
            # a null entry of a fixed-size list still takes dim slots in the child array, so rows line up
            child = flat.values.to_numpy(zero_copy_only=False)
            matrix = child[flat.offset * self.dim: (flat.offset + len(flat)) * self.dim].reshape(-1, self.dim)
            columns = {f.name: table.column(f.name).to_pylist() for f in fields(Row)}
            valid = flat.is_valid().to_pylist() if len(flat) else []
            for k in range(table.num_rows):
                row = Row(**{name: columns[name][k] for name in columns})
                yield row, (np.array(matrix[k], np.float32) if valid[k] else None)


# -------------------------------------------------------------------------------------- into a collection


@dataclass
class ImportReport:
    imported: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = None  # type: ignore[assignment]
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.failed = self.failed or []

    def summary(self) -> str:
        return (f"{self.imported} imported, {self.unchanged} unchanged, {len(self.failed)} failed "
                f"(as embedded) in {self.seconds:.1f}s")


def document_for(row: Row, vector: np.ndarray, field: str, now: float) -> Any:
    """The ``image_search`` document ``clipseek index`` would write for the item (same id, same attributes;
    a local file also gets the indexer's file record, so indexing its folder later finds it unchanged)."""
    from .collection import Document
    from .indexer import docid_for
    from .originals import FILE_KEY, file_record

    extra: dict[str, Any] = {}
    if row.mtime_ns is not None and row.size is not None:
        extra[FILE_KEY] = file_record(row.path_bytes, row.size, row.mtime_ns)
    name = row.path.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return Document(docid_for(row.path_bytes), image_file_name=name, path=row.path, size=row.size,
                    mtime=row.mtime, content_hash=row.content_hash, width=row.width, height=row.height,
                    format=row.format, indexed_at=now, vectors={field: vector}, extra=extra)


def import_shards(shards: ShardSet, coll: Any, *, batch: int = 1000,
                  progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Load every vector of ``shards`` into ``coll`` under the model's field: incremental by content hash
    (a document with the same id and content that already has the field is left alone; one whose content
    changed is replaced, keeping no stale vectors of other models)."""
    started = time.perf_counter()
    report = ImportReport()
    coll.add_field(shards.field, shards.image_model, shards.dim)
    total = len(shards)
    done = 0
    pending: list[Any] = []
    now = time.time()

    def flush() -> None:
        if pending:
            coll.feed(pending)
            report.imported += len(pending)
            pending.clear()

    for row, vector in shards.rows():
        done += 1
        if row.error or vector is None:
            report.failed.append((row.path, row.error or "no vector"))
            continue
        doc = document_for(row, vector, shards.field, now)
        old = coll.get(doc.docid)
        if old is not None and old.content_hash == doc.content_hash:
            if shards.field in old.vectors:
                report.unchanged += 1
                continue
            doc.vectors = {**old.vectors, **doc.vectors}
        pending.append(doc)
        if len(pending) >= batch:
            flush()
            if progress:
                progress(done, total)
    flush()
    if progress:
        progress(done, total)
    report.seconds = time.perf_counter() - started
    return report
