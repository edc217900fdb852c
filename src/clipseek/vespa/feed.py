"""Feed every document and vector of a collection to a Vespa endpoint with pyvespa's ``feed_iterable``.

Puts are idempotent (same id, same fields), so re-running after an interruption is safe; pyvespa retries 429s
and connection errors itself, and failed documents are counted and named.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..collection import DOCUMENT_TYPE, Collection, Document
from ..errors import VespaError


@dataclass
class FeedReport:
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def vespa_fields(doc: Document) -> dict[str, Any]:
    fields: dict[str, Any] = dict(doc.attributes())
    for name, vec in doc.vectors.items():
        fields[name] = [float(v) for v in vec]
    return fields


def _app(url: str, cert: str | None, key: str | None, token: str | None) -> Any:
    try:
        from vespa.application import Vespa
    except ImportError as exc:
        raise VespaError("feeding Vespa needs pyvespa: pip install 'clipseek[vespa]'") from exc
    return Vespa(url=url, cert=cert, key=key, vespa_cloud_secret_token=token)


def _feed(app: Any, docs: Iterator[Document], namespace: str, report: FeedReport, total: int,
          progress: Callable[[int, int], None] | None) -> None:
    def done(response: Any, docid: str) -> None:
        if response.is_successful():
            report.ok += 1
        else:
            report.failed.append((docid, f"HTTP {response.status_code}: {str(response.json)[:200]}"))
        if progress:
            progress(report.ok + len(report.failed), total)

    app.feed_iterable(({"id": d.docid, "fields": vespa_fields(d)} for d in docs), schema=DOCUMENT_TYPE,
                      namespace=namespace, callback=done)


def feed_collection(coll: Collection, url: str, *, namespace: str | None = None, cert: str | None = None,
                    key: str | None = None, token: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> FeedReport:
    app = _app(url, cert, key, token)
    report = FeedReport()
    total = len(coll)
    # documents fed under their own namespace keep it; the others get ``namespace`` or the collection's
    for space in sorted(coll.namespaces(), key=lambda s: s or ""):
        _feed(app, coll.iter_documents(only_namespace=True, namespace=space), space or namespace or coll.namespace,
              report, total, progress)
    return report


def feed_shards(folder: Path, url: str, *, namespace: str = "default", cert: str | None = None,
                key: str | None = None, token: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[FeedReport, int]:
    """Stream the vectors of ``clipseek embed`` shards to Vespa as the documents ``clipseek index`` would write
    (same ids and attributes), one shard in memory at a time. Returns the report and how many items had no
    vector (they failed when embedded and are not fed)."""
    from ..shards import ShardSet, document_for

    shards = ShardSet.open(folder)
    app = _app(url, cert, key, token)
    report = FeedReport()
    skipped = 0
    now = time.time()

    def docs() -> Iterator[Document]:
        nonlocal skipped
        for row, vector in shards.rows():
            if vector is None:
                skipped += 1
                continue
            yield document_for(row, vector, shards.field, now)

    _feed(app, docs(), namespace, report, len(shards), progress)
    return report, skipped
