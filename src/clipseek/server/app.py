"""The ASGI app (Starlette): request parsing and Vespa-shaped rendering around the library; no search logic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Mapping, Sequence, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import query as q
from ..collection import DOCUMENT_TYPE, Collection, Document, SearchResult, check_docid
from ..errors import (ClipseekError, CollectionLockedError, DiskFullError, FieldError, IllegalQueryError, QueryError,
                      TooLargeError, YqlSyntaxError)
from ..lexing import INT64
from ..models import get_spec, load_model
from ..models.encoder import Encoder
from ..summaries import SUMMARY_FIELDS
from ..tensors import TENSOR_FORMS, parse_tensor, render_tensor
from . import native
from .bodies import is_json, loads_json, read_body
from .guard import Guard

if TYPE_CHECKING:
    from ..watch import WatchOptions

T = TypeVar("T")
_ERRORS = {  # Vespa's codes and summaries (container/protect/Error.java, ErrorMessage.java)
    3: "Illegal query", 4: "Invalid query parameter", 17: "Bad request.", 18: "Internal server error.",
}


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def search_error(code: int, message: str, status: int) -> Response:
    root = {"id": "toplevel", "relevance": 1.0, "fields": {"totalCount": 0},
            "errors": [{"code": code, "summary": _ERRORS.get(code, "Error"), "source": "clipseek", "message": message}]}
    return JSON({"root": root}, status_code=status)


class Encoders:
    """Text encoders by model name, loaded once, shared by requests."""

    def __init__(self, loader: Callable[[str], Encoder] | None = None, runtime: Mapping[str, str] | None = None
                 ) -> None:
        """``runtime``: backend/precision/device for :func:`load_model` (unset or "auto": chosen per model)."""
        options = dict(runtime or {})
        self._loader = loader or (lambda name: load_model(name, backend=options.get("backend"),
                                                          precision=options.get("precision"),
                                                          device=options.get("device")))
        self._cache: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str) -> Encoder:
        with self._lock:
            if model not in self._cache:
                self._cache[model] = self._loader(model)
            return self._cache[model]


def tuned_text_model(encoders: Callable[[str], Encoder], default_model: str) -> tuple[Callable[[str], Encoder], str]:
    """When the default model is a text-only fine-tune, its base's field is searched with its text tower.

    Returns the encoder lookup (by the model a field records) and the model whose field is the default."""
    try:
        base = get_spec(default_model).image_model
    except ClipseekError:
        base = None  # an unknown name fails later, where a field needs it, with the usual message
    if base is None:
        return encoders, default_model
    tuned = default_model
    return (lambda model: encoders(tuned if model == base else model)), base


class Shared:
    """The served collection: a reader for searches, a writer taken for document-API writes and released when
    idle, so that a `clipseek index` run can write the same collection while the server keeps answering.

    Every use goes through :meth:`reading` or :meth:`writing`, which count the users of the writer: an idle
    writer is closed only when nobody is using it (closing SQLite under a running read crashes the process)."""

    def __init__(self, path: Path, idle_seconds: float = 20.0) -> None:
        self.path = path
        self.idle_seconds = idle_seconds
        self._reader = Collection.open(path, readonly=True)
        self._writer: Collection | None = None
        self._users = 0  # threads inside reading()/writing() that hold the writer
        self._last_write = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Collection]:
        """The collection to read: the writer while one is open (it sees its own writes first), else the reader."""
        with self._lock:
            coll = self._writer or self._reader
            if coll is not self._reader:
                self._users += 1
        try:
            yield coll
        finally:
            if coll is not self._reader:
                with self._lock:
                    self._users -= 1

    @contextlib.contextmanager
    def writing(self) -> Iterator[Collection]:
        """The writer, opened on first use; :class:`Busy` while another process holds the write lock."""
        with self._lock:
            if self._writer is None:
                try:
                    self._writer = Collection.open(self.path)
                except CollectionLockedError as exc:
                    raise Busy(str(exc)) from exc
            self._users += 1
            writer = self._writer
        try:
            yield writer
        finally:
            with self._lock:
                self._users -= 1
                self._last_write = time.monotonic()

    def release_idle(self) -> bool:
        """Close the writer if idle and unused (so another process may write); True when it was closed."""
        with self._lock:
            if self._writer is not None and self._users == 0 \
                    and time.monotonic() - self._last_write > self.idle_seconds:
                self._writer.close()
                self._writer = None
                return True
            return False

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._reader.close()


class Busy(ClipseekError):
    """Another process holds the write lock: answered with 503, which Vespa clients retry."""


async def read(shared: Shared, fn: Callable[[Collection], T]) -> T:
    """``fn(collection)`` in a worker thread, holding the collection for reading."""
    def go() -> T:
        with shared.reading() as coll:
            return fn(coll)
    return await asyncio.to_thread(go)


async def write(shared: Shared, fn: Callable[[Collection], T]) -> T:
    """``fn(writer)`` in a worker thread, holding the writer."""
    def go() -> T:
        with shared.writing() as coll:
            return fn(coll)
    return await asyncio.to_thread(go)


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


def create_app(path: Path, *, encoders: Callable[[str], Encoder] | None = None,
               default_model: str = "ViT-B/32", token: str | None = None,
               runtime: Mapping[str, str] | None = None,
               allow_hosts: Sequence[str] = (), idle_seconds: float = 20.0, janitor_seconds: float = 2.0,
               watch: WatchOptions | None = None, say: Callable[[str], None] = lambda _m: None) -> Starlette:
    """The app serving the collection at ``path``; ``encoders(model)`` gives the text encoder for ``input=``.

    With ``token``, every route needs ``Authorization: Bearer <token>`` (or ``?token=``). Without one, only
    requests addressed to a loopback name or one of ``allow_hosts`` ("*" for any) are answered (see
    :mod:`clipseek.server.guard`). With ``watch``, a thread indexes those folders with the default model and keeps
    following them (:func:`clipseek.watch.follow_in_server`), reporting through ``say``."""
    encoder_for, default_model = tuned_text_model(encoders or Encoders(runtime=runtime), default_model)
    shared = Shared(path, idle_seconds=idle_seconds)
    source = "clipseek"

    async def status(_: Request) -> Response:
        count = await read(shared, len)
        return JSON({"application": {"vespa": {"version": "clipseek"}, "meta": {"name": "clipseek"}},
                     "documents": count})

    async def search(request: Request) -> Response:
        started = time.perf_counter()
        try:
            params: dict[str, str] = {}
            if request.method == "POST" and is_json(request):  # as Vespa: other bodies are not read
                body = await read_body(request)
                if body.strip():
                    doc = loads_json(body)
                    if not isinstance(doc, dict):
                        raise QueryError("the JSON body must be an object of query parameters")
                    params.update(q.flatten_body(doc))
            params.update(request.query_params)
            req = q.SearchRequest.from_params(params)

            def run(coll: Collection) -> tuple[SearchResult, str]:
                return q.run(coll, req, encoder_for), coll.namespace
            result, namespace = await read(shared, run)
        except TooLargeError as exc:
            return search_error(4, str(exc), 413)
        except (YqlSyntaxError, IllegalQueryError) as exc:
            return search_error(3, str(exc), 400)
        except ClipseekError as exc:
            return search_error(4, str(exc), 400)
        children = []
        for hit in result.hits:
            doc_id = f"id:{hit.namespace or namespace}:{DOCUMENT_TYPE}::{hit.docid}"
            fields = {"sddocname": DOCUMENT_TYPE, "documentid": doc_id, **hit.fields}
            children.append({"id": doc_id, "relevance": hit.relevance, "source": source, "fields": fields})
        root: dict[str, Any] = {
            "id": "toplevel", "relevance": 1.0, "fields": {"totalCount": result.total_count},
            "coverage": {"coverage": 100, "documents": result.documents, "full": True, "nodes": 1, "results": 1,
                         "resultsFull": 1},
        }
        if children:
            root["children"] = children
        out: dict[str, Any] = {}
        if req.timing:
            elapsed = time.perf_counter() - started
            out["timing"] = {"querytime": elapsed, "summaryfetchtime": 0.0, "searchtime": elapsed}
        out["root"] = root
        return JSON(out)

    def doc_error(path: str, message: str, status: int, doc_id: str | None = None) -> Response:
        body = {"pathId": path, "message": message}
        if doc_id:
            body["id"] = doc_id
        return JSON(body, status_code=status)

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
        if name.endswith("_image"):
            try:
                spec = get_spec(name[: -len("_image")])
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

    def render_doc(doc: Document, ns: str, form: str, field_set: str | None = None) -> dict[str, Any]:
        """A document as the document API returns it; ``ns`` names it unless it was fed under its own."""
        ns = doc.namespace or ns
        if field_set == "[id]":  # Vespa's field set of ids only (`vespa visit --field-set '[id]'`)
            return {"id": f"id:{ns}:{DOCUMENT_TYPE}::{doc.docid}"}
        fields: dict[str, Any] = dict(doc.attributes())
        for name, vec in doc.vectors.items():
            fields[name] = render_tensor(vec, form)
        return {"id": f"id:{ns}:{DOCUMENT_TYPE}::{doc.docid}", "fields": fields}

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
                doc = await read(shared, lambda c: c.get(docid))
                if doc is None:
                    return JSON({"pathId": path, "id": full_id}, status_code=404)
                doc.namespace = None  # a get answers with the id it was asked for
                return JSON({"pathId": path, **render_doc(doc, ns, form)})
            if request.method == "DELETE":
                await write(shared, lambda c: c.remove(docid))
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
                await write(shared, put)
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
            await write(shared, update)
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
        return await visit(request, await read(shared, lambda c: c.namespace))

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
            docs, nxt = await read(shared, page)
            if request.method == "DELETE":
                await write(shared, lambda c: [c.remove(d.docid) for d in docs])
        except Busy as exc:
            return doc_error(path, str(exc), 503)
        except QueryError as exc:
            return doc_error(path, str(exc), 400)
        body: dict[str, Any] = {"pathId": path, "documents": [render_doc(d, ns, form, field_set) for d in docs]
                                if request.method == "GET" else [], "documentCount": len(docs)}
        if nxt is not None:
            body["continuation"] = str(nxt)
        return JSON(body)

    async def status_page(_: Request) -> Response:
        return PlainTextResponse("OK")

    routes: list[BaseRoute] = [
        Route("/ApplicationStatus", status),
        Route("/status.html", status_page),
        Route("/search/", search, methods=["GET", "POST"]),
        Route("/search", search, methods=["GET", "POST"]),
        Route("/document/v1/{namespace}/{doctype}/docid/{docid:path}", document,
              methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/document/v1/{namespace}/{doctype}/docid", visit, methods=["GET", "DELETE"]),
        Route("/document/v1/", visit_all, methods=["GET", "DELETE"]),
    ]

    async def too_large(request: Request, exc: Exception) -> Response:
        return JSON({"error": {"status": 413, "type": "TooLargeError", "message": str(exc)}}, status_code=413)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400)
        message = {404: f"no such path: {request.url.path[:200]}", 405: f"{request.method} is not allowed here"}.get(
            status, str(getattr(exc, "detail", "bad request")))
        return JSON({"error": {"status": status, "type": type(exc).__name__, "message": message}},
                    status_code=status, headers=getattr(exc, "headers", None))

    async def fallback(request: Request, exc: Exception) -> Response:
        return search_error(18, f"internal error: {type(exc).__name__}: {exc}", 500)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async def janitor() -> None:
            while True:
                await asyncio.sleep(janitor_seconds)
                await asyncio.to_thread(shared.release_idle)
        task = asyncio.create_task(janitor())
        stop = threading.Event()
        follower = None
        if watch is not None:
            from ..watch import follow_in_server

            follower = threading.Thread(target=follow_in_server, args=(shared, default_model, watch, stop, say),
                                        name="clipseek-serve-watch", daemon=True)
            follower.start()
        try:
            yield
        finally:
            task.cancel()
            stop.set()
            if follower is not None:
                follower.join(timeout=30)
            shared.close()

    routes += native.routes(shared, encoder_for, default_model)
    web = Path(str(resources.files("clipseek").joinpath("web")))

    async def page(request: Request) -> Response:
        """The page for browsers; for API clients, Vespa's root listing of handlers (``vespa visit`` probes it)."""
        if "text/html" in request.headers.get("accept", ""):
            return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})
        return JSON({"handlers": [
            {"id": "search", "class": "clipseek.server.SearchHandler", "bundle": "clipseek",
             "serverBindings": ["http://*/search/*"]},
            {"id": "document-api", "class": "clipseek.server.DocumentV1ApiHandler", "bundle": "clipseek",
             "serverBindings": ["http://*/document/v1/*"]},
        ]})

    routes += [Route("/", page), Mount("/static", StaticFiles(directory=web), name="static")]
    middleware = [Middleware(Guard, token=token, allow_hosts=allow_hosts, max_body=native.MAX_UPLOAD + 1024 * 1024)]
    app = Starlette(routes=routes, exception_handlers={TooLargeError: too_large, HTTPException: http_error,
                                                       Exception: fallback},
                    lifespan=lifespan, middleware=middleware)
    app.state.shared = shared
    return app
