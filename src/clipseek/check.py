"""``clipseek check``: verify a collection folder, and with ``repair`` rebuild what is derived and drop what is lost.

What it checks, and what ``repair`` does about each:

=====================================  ==========================================================================
SQLite ``PRAGMA integrity_check``      reported only: restore ``collection.sqlite`` from a backup or re-index
vector file shorter than its slots     documents on the missing rows lose that field's vector (re-embedded by the
                                       next ``clipseek index``); the field's slot count shrinks to the file
rows failing their CRC-32              documents on those rows lose that field's vector, likewise
documents pointing past the rows       their vector entries are dropped, likewise
a slot that is not a number            likewise
norm file disagreeing with the rows    rewritten from the rows (derived)
checksums missing (older clipseek)     computed from the rows as they are (derived)
graph snapshot damaged                 deleted; the graph is rebuilt from the vectors on the next open (derived)
=====================================  ==========================================================================

Vectors are primary data: a damaged row cannot be rebuilt here, only re-embedded from its image, which is what
the documents listed in :attr:`CheckReport.reindex` need (``clipseek index`` over their folders does it).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .hnsw import LEGACY_SUFFIXES, SUFFIX, snapshot_meta


@dataclass
class CheckReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    reindex: list[str] = field(default_factory=list)  # paths (or ids) of documents that lost a vector
    documents: int = 0

    @property
    def ok(self) -> bool:
        """No problem left: none found, or every one found was repaired."""
        return len(self.problems) == len(self.repaired)

    def as_dict(self) -> dict[str, object]:
        return {"collection": str(self.path), "documents": self.documents, "ok": self.ok, "problems": self.problems,
                "repaired": self.repaired, "reindex": self.reindex}


def check(path: str | os.PathLike[str], *, repair: bool = False) -> CheckReport:
    """Verify the collection at ``path``; with ``repair``, take its write lock and fix what can be fixed."""
    from .collection import _lock

    folder = Path(path)
    report = CheckReport(folder)
    lock = _lock(folder) if repair else None
    try:
        db = store.connect(folder, create=False, readonly=not repair)
        try:
            _check(folder, db, report, repair)
        finally:
            if repair:
                store.checkpoint_wal(db, folder)
            db.close()
    finally:
        if lock is not None:
            os.close(lock)
    return report


def _check(folder: Path, db: sqlite3.Connection, report: CheckReport, repair: bool) -> None:
    try:
        verdict = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        verdict = [str(exc)]
    if verdict != ["ok"]:
        report.problems.append(f"{store.DB_FILE} fails SQLite's integrity check ({'; '.join(verdict[:3])}): restore it "
                               "from a backup, or index the photos into a new collection")
        return
    report.documents = int(db.execute("SELECT count(*) FROM documents").fetchone()[0])
    for row in db.execute("SELECT name, dim, next_slot FROM vector_fields").fetchall():
        _check_field(folder, db, report, repair, row["name"], int(row["dim"]), int(row["next_slot"]))


def _problem(report: CheckReport, text: str, fixed: bool) -> None:
    report.problems.append(text)
    if fixed:
        report.repaired.append(text)


def _check_field(folder: Path, db: sqlite3.Connection, report: CheckReport, repair: bool, name: str, dim: int,
                 next_slot: int) -> None:
    vectors = store.VectorFile(folder / "vectors" / f"{name}.f32", dim, next_slot)
    entries = db.execute("SELECT doc, slot, typeof(slot) = 'integer' FROM vectors WHERE field=?", (name,)).fetchall()
    live = {int(slot): int(doc) for doc, slot, whole in entries if whole}
    garbled = [int(doc) for doc, _slot, whole in entries if not whole]  # text, a fraction: not a row of the file
    if garbled:
        _problem(report, f"field {name}: {len(garbled)} documents have a slot that is not a number in the vectors "
                         "table (they lose this vector)", repair)
    lost: set[int] = set()
    beyond = [s for s in live if not 0 <= s < next_slot]
    if beyond:
        _problem(report, f"field {name}: {len(beyond)} documents point past its {next_slot} rows", repair)
        lost.update(beyond)
    have = vectors.stored_rows()
    rows = min(have, next_slot)
    if have < next_slot:
        gone = [s for s in live if have <= s < next_slot]
        _problem(report, f"field {name}: {vectors.path.name} holds {have} rows but {next_slot} are committed "
                         f"(truncated; {len(gone)} documents lose this vector)", repair)
        lost.update(gone)
    vectors.rows = rows
    if rows:
        norms, bad_slots, covered = vectors.verify(0)  # the same checks as an open, over every row
        bad = [int(s) for s in bad_slots if int(s) in live]
        if bad:
            _problem(report, f"field {name}: {len(bad)} vector rows fail their checksum in {vectors.path.name}", repair)
            lost.update(bad)
        if covered < rows:
            _problem(report, f"field {name}: {rows - covered} rows have no checksum yet", repair)
        stored_norms = vectors.norms(0)
        used = np.asarray(sorted(s for s in live if s < rows), dtype=np.int64)
        wrong = int(np.count_nonzero(~np.isclose(stored_norms[used], norms[used], rtol=1e-5, atol=1e-7)))
        if wrong:
            _problem(report, f"field {name}: {wrong} norms in {vectors.norm_path.name} disagree with the rows", repair)
        if repair:
            vectors.rewrite_derived(0, norms)
    snapshots = [p for suffix in (SUFFIX, *LEGACY_SUFFIXES) for p in (folder / "ann").glob(f"{name}.*{suffix}")]
    for snapshot in sorted(snapshots):
        meta_path = snapshot.with_suffix(".json")
        if snapshot_meta(snapshot) is None:
            _problem(report, f"field {name}: graph snapshot {snapshot.name} is damaged or of an older format "
                             "(rebuilt from the vectors on the next open)", repair)
            if repair:
                snapshot.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                snapshot.with_suffix(".r4").unlink(missing_ok=True)
    if lost or garbled:
        docs = sorted({live[s] for s in lost} | set(garbled))
        for doc in docs:
            row = db.execute("SELECT docid, path FROM documents WHERE id=?", (doc,)).fetchone()
            if row is not None:
                report.reindex.append(row["path"] or row["docid"])
        if repair:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM vectors WHERE field=? AND slot=?", [(name, s) for s in sorted(lost)])
                db.executemany("DELETE FROM vectors WHERE field=? AND doc=?", [(name, d) for d in garbled])
                if have < next_slot:
                    db.execute("UPDATE vector_fields SET next_slot=? WHERE name=?", (have, name))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise


__all__ = ["CheckReport", "check"]
