"""Folders of images → documents in a collection: incremental, parallel, resumable, and honest about failures.

A run walks the given roots (hidden folders and the collection itself skipped, symlink loops survived),
skips files whose size and mtime are unchanged, reuses the vector of a file with the same content hash
(renamed or copied), removes documents whose files are gone, and embeds the rest: decoding and preprocessing
in worker threads overlap batched inference, and every batch is committed as it completes, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import os
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from .collection import Collection, Document
from .errors import DiskFullError, ImageError
from .exif import PhotoMeta
from .models.encoder import Encoder
from .originals import file_record, indexed_file
from .transforms import RAW_EXTENSIONS, raw_supported, register_optional_formats

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FAILURE_LOG = "index-failures.log"


@dataclass
class IndexReport:
    """What a run did; ``failed`` lists (path, reason) for every file that could not be indexed."""

    found: int = 0
    indexed: int = 0
    unchanged: int = 0
    reused: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: (path, what was left out and why) for photos indexed without some of their EXIF (an impossible date,
    #: malformed GPS): the photo is in, those fields are not.
    metadata_skipped: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{self.indexed} indexed, {self.unchanged} unchanged, {self.reused} reused, "
                f"{self.removed} removed, {len(self.failed)} failed in {self.seconds:.1f}s")
        if self.metadata_skipped:
            text += f"; {len(self.metadata_skipped)} indexed without some EXIF fields"
        return ("interrupted: " + text) if self.interrupted else text


def field_for(encoder: Encoder) -> str:
    return encoder.spec.field_name


def supported_extensions() -> set[str]:
    """Pillow's formats, HEIC/HEIF and AVIF where their decoders are installed, camera RAW where rawpy is."""
    return EXTENSIONS | register_optional_formats() | (RAW_EXTENSIONS if raw_supported() else set())


def raw_shadowed(name: bytes, siblings: set[bytes]) -> bool:
    """A RAW file beside a JPEG (or other picture) of the same name is left out: the camera or the photographer
    made that picture from it, so indexing both would show the same photo twice. ``siblings``: the lower-cased
    names of the pictures in the same folder that are not RAW."""
    stem, ext = os.path.splitext(name)
    if os.fsdecode(ext).lower() not in RAW_EXTENSIONS:
        return False
    return any(os.path.splitext(s)[0] == stem.lower() for s in siblings)


def _pictures(names: Iterable[bytes], exts: set[str]) -> set[bytes]:
    return {n.lower() for n in names
            if (e := os.fsdecode(os.path.splitext(n)[1]).lower()) in exts and e not in RAW_EXTENSIONS}


def display_path(raw: bytes) -> str:
    """Text for a path's bytes; names that are not UTF-8 keep their bytes as ``\\xNN`` escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


def docid_for(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:20]


def excluded(name: bytes, relative: bytes, patterns: Sequence[str]) -> bool:
    """Whether a file or folder is left out: hidden (its name starts with a dot), or a pattern matches its name or
    its path relative to the root being walked (``--exclude 'node_modules'``, ``--exclude '*.tmp'``,
    ``--exclude 'Archive/2019/*'``)."""
    if name.startswith(b"."):
        return True
    if not patterns:
        return False
    texts = (os.fsdecode(name), os.fsdecode(relative))
    return any(fnmatch.fnmatchcase(t, p) for p in patterns for t in texts)


def walk(roots: Iterable[Path], skip: Iterable[Path] = (), extensions: set[str] | None = None,
         exclude: Sequence[str] = ()) -> Iterator[tuple[bytes, os.stat_result]]:
    """Image files under ``roots`` as (absolute path bytes, stat); follows links once, never loops; leaves out
    what :func:`excluded` says."""
    exts = extensions or supported_extensions()
    skip_ids = set()
    for s in skip:
        try:
            st = os.stat(s)
            skip_ids.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    seen: set[tuple[int, int]] = set()
    for root in roots:
        raw_root = os.fsencode(os.path.abspath(root))
        try:
            st = os.stat(raw_root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            if os.path.splitext(raw_root)[1].decode("utf-8", "replace").lower() in exts:
                folder, name = os.path.split(raw_root)
                try:
                    siblings = _pictures(os.listdir(folder), exts) if os.fsdecode(
                        os.path.splitext(name)[1]).lower() in RAW_EXTENSIONS else set()
                except OSError:
                    siblings = set()
                if not raw_shadowed(name, siblings):
                    yield raw_root, st
            continue
        stack = [raw_root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen or key in skip_ids:
                continue
            seen.add(key)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            subdirs = []
            pictures = _pictures((e.name for e in entries), exts)
            for entry in entries:
                if excluded(entry.name, entry.path[len(raw_root):].lstrip(b"/"), exclude):
                    continue
                if raw_shadowed(entry.name, pictures):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=True):
                        subdirs.append(entry.path)
                    elif entry.is_file(follow_symlinks=True):
                        if os.path.splitext(entry.name)[1].decode("utf-8", "replace").lower() in exts:
                            yield entry.path, entry.stat(follow_symlinks=True)
                except OSError:
                    continue
            stack.extend(reversed(subdirs))


def read_image_file(raw: bytes) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None), or (None, why it cannot be indexed) — the reasons every failure report uses."""
    try:
        with open(raw, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, ("vanished before it could be read" if isinstance(exc, FileNotFoundError) else
                      f"cannot read: {exc.strerror}")
    if not data:
        return None, "empty file (0 bytes)"
    return data, None


@dataclass
class _Prepared:
    raw: bytes
    st: os.stat_result
    content_hash: str | None = None
    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    meta: PhotoMeta | None = None
    error: str | None = None


class _Known(NamedTuple):
    """What the indexer knows of a document: its file's size and mtime when it recorded them, its content hash,
    whether it has this model's vector, and its path's bytes."""

    size: int | None
    mtime: float | None
    content_hash: str | None
    has_vector: bool
    raw: bytes | None


class Indexer:
    """Index image folders into ``collection`` with ``encoder``. ``progress(done, total)`` is called as it goes.

    :meth:`run` reads what the collection holds afresh; :meth:`update` (the watcher's, for a few changed paths at
    a time) keeps that knowledge from the previous call and what it wrote since, instead of reading every document
    again for each batch of events."""

    def __init__(self, collection: Collection, encoder: Encoder, *, workers: int | None = None,
                 batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                 exclude: Sequence[str] = ()) -> None:
        self.collection = collection
        self.encoder = encoder
        self.workers = workers or max(2, (os.cpu_count() or 2))
        self.batch_size = batch_size or encoder.batch_size
        self.progress = progress or (lambda done, total: None)
        self.exclude = tuple(exclude)
        self.field = field_for(encoder)
        self._known: dict[str, _Known] | None = None
        collection.add_field(self.field, encoder.image_ref, encoder.dim)

    def run(self, roots: Iterable[Path]) -> IndexReport:
        """Index ``roots``; Ctrl-C stops cleanly at any point with the report so far (committed work is kept)."""
        self._known = None
        return self._index([Path(r) for r in roots], register=True)

    def update(self, paths: Iterable[Path]) -> IndexReport:
        """Index what changed at ``paths`` (files or folders, present or gone) under roots already indexed: new and
        changed files embedded, moved ones reuse their vectors, vanished ones removed. Paths are not registered
        as indexed roots."""
        return self._index([Path(p) for p in paths], register=False)

    def _index(self, roots: list[Path], register: bool) -> IndexReport:
        started = time.perf_counter()
        report = IndexReport()
        try:
            self._run(roots, report, register)
        except KeyboardInterrupt:
            report.interrupted = True
        except DiskFullError as exc:
            raise DiskFullError(self.collection.path, report.indexed + report.reused) from exc
        finally:
            try:
                self.collection.checkpoint()  # graph snapshots, and the WAL folded into collection.sqlite
            except OSError:
                pass
        report.seconds = time.perf_counter() - started
        self._log_failures(report)
        return report

    def _run(self, roots: list[Path], report: IndexReport, register: bool) -> None:
        if register:
            self.collection.add_indexed_roots(os.fsencode(os.path.realpath(r)) for r in roots)
        if self._known is None:
            self._known = self._existing()
        existing = self._known
        by_hash = {k.content_hash: docid for docid, k in existing.items() if k.content_hash and k.has_vector}
        todo: list[tuple[bytes, os.stat_result]] = []
        present: set[str] = set()
        for raw, st in walk(roots, skip=[self.collection.path], exclude=self.exclude):
            report.found += 1
            docid = docid_for(raw)
            present.add(docid)
            old = existing.get(docid)
            if old and old.size == st.st_size and old.mtime == st.st_mtime and old.has_vector:
                report.unchanged += 1
            else:
                todo.append((raw, st))
        self.progress(0, len(todo))
        self._embed_all(todo, by_hash, report)
        # after embedding, so a renamed file could still reuse the vector of its old name
        report.removed = self._remove_missing(roots, present)

    def _existing(self) -> dict[str, _Known]:
        """What every document holds; a document without the indexer's record of its file (written by an older
        clipseek, or through the document API) has no size here, so it counts as changed and gets one."""
        out = {}
        for doc in self.collection.iter_documents(with_vectors=True):
            size = doc.size if indexed_file(doc.extra) is not None else None
            out[doc.docid] = _Known(size, doc.mtime, doc.content_hash, self.field in doc.vectors, _raw_path(doc))
        return out

    def _remove_missing(self, roots: list[Path], present: set[str]) -> int:
        prefixes = [os.fsencode(os.path.abspath(r)) for r in roots]
        removed = 0
        assert self._known is not None
        for docid, known in list(self._known.items()):
            raw = known.raw
            if docid in present or raw is None:
                continue
            if not any(raw == p or raw.startswith(p.rstrip(b"/") + b"/") for p in prefixes):
                continue
            if not os.path.lexists(raw):
                self.collection.remove(docid)
                del self._known[docid]
                removed += 1
        return removed

    def _prepare(self, raw: bytes, st: os.stat_result) -> _Prepared:
        item = _Prepared(raw, st)
        data, item.error = read_image_file(raw)
        if data is None:
            return item
        item.content_hash = hashlib.sha256(data).hexdigest()
        try:
            img, info = self.encoder.load(io.BytesIO(data), name=display_path(raw))
            item.width, item.height, item.format, item.meta = info.width, info.height, info.format, info.meta
            item.pixels = self.encoder.preprocess_image(img)
        except ImageError as exc:
            item.error = exc.reason
        return item

    def _embed_all(self, todo: list[tuple[bytes, os.stat_result]], by_hash: dict[str, str],
                   report: IndexReport) -> None:
        done = 0
        with ThreadPoolExecutor(self.workers) as pool:
            pending: list[Future[_Prepared]] = []
            queue = iter(todo)
            ahead = self.batch_size * 3
            for raw, st in queue:
                pending.append(pool.submit(self._prepare, raw, st))
                if len(pending) >= ahead:
                    break
            while pending:
                batch, pending = pending[: self.batch_size], pending[self.batch_size:]
                items = [f.result() for f in batch]
                for raw, st in queue:
                    pending.append(pool.submit(self._prepare, raw, st))
                    if len(pending) >= ahead:
                        break
                self._commit(items, by_hash, report)
                done += len(items)
                self.progress(done, len(todo))

    def _commit(self, items: list[_Prepared], by_hash: dict[str, str], report: IndexReport) -> None:
        docs: list[Document] = []
        to_embed: list[tuple[Document, np.ndarray]] = []
        reused_count = 0
        now = time.time()
        for it in items:
            if it.error:
                report.failed.append((display_path(it.raw), it.error))
                continue
            doc = _document(it, now)
            if it.meta is not None and it.meta.problems:
                report.metadata_skipped.append((display_path(it.raw), "; ".join(it.meta.problems)))
            source = by_hash.get(it.content_hash or "")
            reused = self.collection.get(source) if source else None
            if reused is not None and self.field in reused.vectors:
                doc.vectors = dict(reused.vectors)
                reused_count += 1
            else:
                assert it.pixels is not None
                to_embed.append((doc, it.pixels))
            old = self.collection.get(doc.docid)
            if old is not None:  # keep the other models' vectors of a changed file only if content is the same
                if old.content_hash == doc.content_hash:
                    doc.vectors = {**old.vectors, **doc.vectors}
            docs.append(doc)
        if to_embed:
            vectors = self.encoder.embed_pixels(np.stack([p for _, p in to_embed]))
            for (doc, _), vec in zip(to_embed, vectors):
                doc.vectors[self.field] = vec
        if docs:
            self.collection.feed(docs)  # counted once committed: a report never claims a batch that failed
            report.indexed += len(to_embed)
            report.reused += reused_count
            for doc in docs:
                if doc.content_hash:
                    by_hash.setdefault(doc.content_hash, doc.docid)
                if self._known is not None:
                    self._known[doc.docid] = _Known(doc.size, doc.mtime, doc.content_hash,
                                                    self.field in doc.vectors, _raw_path(doc))

    def _log_failures(self, report: IndexReport) -> None:
        if not report.failed:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(self.collection.path / FAILURE_LOG, "a", encoding="utf-8") as fh:
            for path, reason in report.failed:
                fh.write(f"{stamp}\t{path!r}\t{reason}\n")


def _document(it: _Prepared, now: float) -> Document:
    text = display_path(it.raw)
    # the path's bytes, whatever their encoding
    extra: dict[str, object] = {"file": file_record(it.raw, it.st.st_size, it.st.st_mtime_ns)}
    meta = it.meta or PhotoMeta()
    taken, source = (meta.taken, "exif") if meta.taken is not None else (it.st.st_mtime, "file")
    return Document(docid_for(it.raw), image_file_name=os.path.basename(text), path=text, size=it.st.st_size,
                    mtime=it.st.st_mtime, content_hash=it.content_hash, width=it.width, height=it.height,
                    format=it.format, indexed_at=now, taken=taken, taken_tz=meta.taken_tz, taken_source=source,
                    camera=meta.camera, lens=meta.lens, lat=meta.lat, lon=meta.lon, extra=extra)


def _raw_path(doc: Document) -> bytes | None:
    """The path's bytes: from the indexer's file record, or ``path_b64`` (clipseek before the record), or the text."""
    record = indexed_file(doc.extra)
    if record is not None:
        return record[0]
    if "path_b64" in doc.extra:
        return base64.b64decode(doc.extra["path_b64"])
    return doc.path.encode("utf-8") if doc.path else None
