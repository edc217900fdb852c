"""How answers look: Vespa's result and document JSON, Vespa's error shapes, and the native API's errors."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from ..collection import DOCUMENT_TYPE, Document, SearchResult
from ..tensors import render_tensor

SOURCE = "clipseek"
_ERRORS = {  # Vespa's codes and summaries (container/protect/Error.java, ErrorMessage.java)
    3: "Illegal query", 4: "Invalid query parameter", 17: "Bad request.", 18: "Internal server error.",
}


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def search_error(code: int, message: str, status: int) -> Response:
    """A search error as Vespa's search handler renders it."""
    root = {"id": "toplevel", "relevance": 1.0, "fields": {"totalCount": 0},
            "errors": [{"code": code, "summary": _ERRORS.get(code, "Error"), "source": SOURCE, "message": message}]}
    return JSON({"root": root}, status_code=status)


def search_result(result: SearchResult, namespace: str, elapsed: float | None) -> dict[str, Any]:
    """A result as Vespa's search handler renders it (``elapsed``: the timing block, when asked for)."""
    children = []
    for hit in result.hits:
        doc_id = f"id:{hit.namespace or namespace}:{DOCUMENT_TYPE}::{hit.docid}"
        fields = {"sddocname": DOCUMENT_TYPE, "documentid": doc_id, **hit.fields}
        children.append({"id": doc_id, "relevance": hit.relevance, "source": SOURCE, "fields": fields})
    root: dict[str, Any] = {
        "id": "toplevel", "relevance": 1.0, "fields": {"totalCount": result.total_count},
        "coverage": {"coverage": 100, "documents": result.documents, "full": True, "nodes": 1, "results": 1,
                     "resultsFull": 1},
    }
    if children:
        root["children"] = children
    out: dict[str, Any] = {}
    if elapsed is not None:
        out["timing"] = {"querytime": elapsed, "summaryfetchtime": 0.0, "searchtime": elapsed}
    out["root"] = root
    return out


def doc_error(path: str, message: str, status: int, doc_id: str | None = None) -> Response:
    """A document API error as Vespa's /document/v1 renders it."""
    body = {"pathId": path, "message": message}
    if doc_id:
        body["id"] = doc_id
    return JSON(body, status_code=status)


def render_doc(doc: Document, ns: str, form: str, field_set: str | None = None) -> dict[str, Any]:
    """A document as the document API returns it; ``ns`` names it unless it was fed under its own."""
    ns = doc.namespace or ns
    if field_set == "[id]":  # Vespa's field set of ids only (`vespa visit --field-set '[id]'`)
        return {"id": f"id:{ns}:{DOCUMENT_TYPE}::{doc.docid}"}
    fields: dict[str, Any] = dict(doc.attributes())
    for name, vec in doc.vectors.items():
        fields[name] = render_tensor(vec, form)
    return {"id": f"id:{ns}:{DOCUMENT_TYPE}::{doc.docid}", "fields": fields}


def api_error(status: int, exc: Exception | str, kind: str | None = None) -> JSONResponse:
    """The native API's error: ``{"error": {"status", "type", "message"}}``."""
    message = str(exc)
    return JSONResponse({"error": {"status": status, "type": kind or type(exc).__name__, "message": message}},
                        status_code=status)
