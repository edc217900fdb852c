"""Vespa's document API, ``/document/v1/``: get, put, update (assign) and remove one document, and visit (or
delete) many in id order, with Vespa's paths, JSON and errors, so that pyvespa's feed and the ``vespa`` CLI's
``feed``, ``document`` and ``visit`` work unchanged. Writes take the served collection's writer (503 while another
process holds the write lock, which Vespa clients retry).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ..collection import DOCUMENT_TYPE, Collection, Document, check_docid
from ..errors import ClipseekError, DiskFullError, FieldError, QueryError, TooLargeError
from ..lexing import INT64
from ..models import get_spec
from ..schema import ModelNames
from ..summaries import SUMMARY_FIELDS
from ..tensors import TENSOR_FORMS, parse_tensor
from .bodies import is_json, loads_json, read_body
from .rendering import JSON, doc_error, render_doc
from .state import Busy, read, write


async def status(request: Request) -> Response:
    count = await read(request, len)
    return JSON({"application": {"vespa": {"version": "clipseek"}, "meta": {"name": "clipseek"}},
                 "documents": count})

async def status_page(_: Request) -> Response:
    return PlainTextResponse("OK")

def whole(params: Any, name: str, default: int, low: int, high: int) -> int:
    """An integer request parameter within ``low..high``; anything else is a QueryError naming it."""
    text = params.get(name)
    if text is None or text == "":
        return default
    digits = text.strip()
    if not (digits.isascii() and digits.lstrip("-").isdigit()) or len(digits) > 20:
        raise QueryError(f"'{name}' must be a whole number, got {text[:40]!r}")
    value = int(digits)
    if not low <= value <= high:
        raise QueryError(f"'{name}' must be in {low}..{high}, got {value}")
    return value


def doc_path(request: Request) -> tuple[str, str, str]:
    """(namespace, docid, full id): the path is percent-decoded once, by the server, and never again."""
    ns = request.path_params["namespace"]
    dtype = request.path_params["doctype"]
    if dtype != DOCUMENT_TYPE:
        raise FieldError(f"Document type {dtype} does not exist: this server has only {DOCUMENT_TYPE}")
    docid = request.path_params.get("docid", "")
    if docid:
        check_docid(docid)
    return ns, docid, f"id:{ns}:{DOCUMENT_TYPE}::{docid}"

def vector_field(collection: Collection, name: str) -> str:
    """The vector field ``name`` exactly (a registry model's ``<slug>_image`` is created on first use)."""
    if name in collection.fields:
        return name
    names = ModelNames.of_field(name)
    if names is not None:
        try:
            spec = get_spec(names.slug)
        except ClipseekError:
            spec = None
        if spec is not None and spec.field_name == name:
            collection.add_field(name, spec.name, spec.embed_dim)
            return name
    valid = ", ".join([*SUMMARY_FIELDS, *sorted(collection.fields)])
    raise FieldError(f"No field '{name}' in the structure of type '{DOCUMENT_TYPE}'; fields are: {valid}")

def to_document(collection: Collection, docid: str, fields: dict[str, Any]) -> Document:
    doc = Document(docid)
    for name, value in fields.items():
        if name in SUMMARY_FIELDS:  # the collection checks each value's type before it stores it
            setattr(doc, name, value)
        else:
            fname = vector_field(collection, name)
            doc.vectors[fname] = parse_tensor(value, f"field {name}")
    return doc

def tensor_form(request: Request) -> str:
    form = request.query_params.get("format.tensors", "short")
    if form not in TENSOR_FORMS:
        raise QueryError(f"unknown format.tensors {form[:40]!r}: use {', '.join(TENSOR_FORMS)}")
    return form

async def document(request: Request) -> Response:
    path = request.url.path
    try:
        ns, docid, full_id = doc_path(request)
        if not docid:
            if request.method in ("GET", "DELETE"):
                return await visit(request)
            raise QueryError("empty document id")
        form = tensor_form(request)
        if request.method == "GET":
            doc = await read(request, lambda c: c.get(docid))
            if doc is None:
                return JSON({"pathId": path, "id": full_id}, status_code=404)
            doc.namespace = None  # a get answers with the id it was asked for
            return JSON({"pathId": path, **render_doc(doc, ns, form)})
        if request.method == "DELETE":
            await write(request, lambda c: c.remove(docid))
            return JSON({"pathId": path, "id": full_id})
        if not is_json(request):
            return doc_error(path, "a document put or update needs 'Content-Type: application/json'", 415)
        payload = loads_json(await read_body(request) or b"{}")
        fields = payload.get("fields", {}) if isinstance(payload, dict) else None
        if not isinstance(fields, dict):
            raise QueryError("the body must be a JSON object with a 'fields' object")
        if request.method == "POST":
            def put(coll: Collection) -> None:
                doc = to_document(coll, docid, fields)
                doc.namespace = ns
                coll.put(doc)
            await write(request, put)
            return JSON({"pathId": path, "id": full_id})
        create = request.query_params.get("create", "false").lower() == "true"

        def update(coll: Collection) -> None:
            attributes, vectors = {}, {}
            for name, op in fields.items():
                if not isinstance(op, dict) or set(op) != {"assign"}:
                    raise QueryError(f"field {name}: only {{\"assign\": value}} updates are supported")
                if name in SUMMARY_FIELDS:
                    attributes[name] = op["assign"]
                else:
                    fname = vector_field(coll, name)
                    vectors[fname] = parse_tensor(op["assign"], f"field {name}")
            coll.update(docid, attributes=attributes, vectors=vectors, create=create, namespace=ns)
        await write(request, update)
        return JSON({"pathId": path, "id": full_id})
    except Busy as exc:
        return doc_error(path, str(exc), 503)
    except TooLargeError as exc:
        return doc_error(path, str(exc), 413)
    except DiskFullError as exc:
        return doc_error(path, str(exc), 507)
    except QueryError as exc:
        return doc_error(path, str(exc), 400)

async def visit_all(request: Request) -> Response:
    """``/document/v1/?cluster=C``: Vespa's visit across types; the ``vespa visit`` CLI asks for ``*`` first
    and reads the content cluster names from the error (Vespa's wording, which the CLI parses)."""
    path = request.url.path
    cluster = request.query_params.get("cluster")
    if cluster != DOCUMENT_TYPE:
        message = (f"Your Vespa deployment has no content cluster '{cluster}', only '{DOCUMENT_TYPE}'"
                   if cluster else f"Please specify the content cluster to visit: '{DOCUMENT_TYPE}'")
        return doc_error(path, message, 400)
    if request.query_params.get("bucketSpace", "default") == "global":  # documents live in 'default'
        return JSON({"pathId": path, "documents": [], "documentCount": 0})
    return await visit(request, await read(request, lambda c: c.namespace))

async def visit(request: Request, namespace: str | None = None) -> Response:
    """Visit (or delete) in id order the documents ``selection`` matches: ``/document/v1/<ns>/<type>/docid/``
    those of that namespace, as Vespa does; the cluster-wide visit (``namespace`` given: the collection's,
    for ids) every namespace's. A delete needs a ``selection`` and a ``cluster``, as in Vespa."""
    path = request.url.path
    params = request.query_params
    try:
        ns = namespace or doc_path(request)[0]
        scoped = namespace is None
        start = whole(params, "continuation", 0, 0, INT64 - 1)
        wanted = whole(params, "wantedDocumentCount", 100, 1, 1 << 62)
        wanted = min(wanted, 1000)
        form = tensor_form(request)
        slices = whole(params, "slices", 1, 1, 1 << 62)
        slice_id = whole(params, "sliceId", 0, 0, slices - 1)
        selection = params.get("selection")  # compiled by the visit below, before any delete: bad is a 400
        if request.method == "DELETE":
            if not selection:
                raise QueryError("a delete of many documents needs a 'selection' (e.g. selection=true for all)")
            if not params.get("cluster"):
                raise QueryError(f"a delete of many documents needs a 'cluster' ({DOCUMENT_TYPE})")
        field_set = params.get("fieldSet")

        def page(coll: Collection) -> tuple[list[Document], int | None]:
            only = None if ns == coll.namespace else ns  # stored as NULL: the collection's own namespace
            return coll.visit(continuation=start, count=wanted, only_namespace=scoped, namespace=only,
                              slices=slices, slice_id=slice_id, selection=selection,
                              with_vectors=request.method == "GET" and field_set != "[id]")
        docs, nxt = await read(request, page)
        if request.method == "DELETE":
            await write(request, lambda c: [c.remove(d.docid) for d in docs])
    except Busy as exc:
        return doc_error(path, str(exc), 503)
    except QueryError as exc:
        return doc_error(path, str(exc), 400)
    body: dict[str, Any] = {"pathId": path, "documents": [render_doc(d, ns, form, field_set) for d in docs]
                            if request.method == "GET" else [], "documentCount": len(docs)}
    if nxt is not None:
        body["continuation"] = str(nxt)
    return JSON(body)

