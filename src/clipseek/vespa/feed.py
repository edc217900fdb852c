"""Feed every document and vector of a collection to a Vespa endpoint with pyvespa's ``feed_iterable``.

Puts are idempotent (same id, same fields), so re-running after an interruption is safe; pyvespa retries 429s
and connection errors itself, and failed documents are counted and named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def feed_collection(coll: Collection, url: str, *, namespace: str | None = None, cert: str | None = None,
                    key: str | None = None, token: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> FeedReport:
    try:
        from vespa.application import Vespa
    except ImportError as exc:
        raise VespaError("feeding Vespa needs pyvespa: pip install 'clipseek[vespa]'") from exc

    app = Vespa(url=url, cert=cert, key=key, vespa_cloud_secret_token=token)
    report = FeedReport()
    total = len(coll)

    def docs(space: str | None) -> Iterator[dict[str, Any]]:
        for doc in coll.iter_documents(only_namespace=True, namespace=space):
            yield {"id": doc.docid, "fields": vespa_fields(doc)}

    def done(response: Any, docid: str) -> None:
        if response.is_successful():
            report.ok += 1
        else:
            report.failed.append((docid, f"HTTP {response.status_code}: {str(response.json)[:200]}"))
        if progress:
            progress(report.ok + len(report.failed), total)

    # documents fed under their own namespace keep it; the others get ``namespace`` or the collection's
    for space in sorted(coll.namespaces(), key=lambda s: s or ""):
        app.feed_iterable(docs(space), schema=DOCUMENT_TYPE, namespace=space or namespace or coll.namespace,
                          callback=done)
    return report
