"""The ASGI app (Starlette): request parsing and Vespa-shaped rendering around the library; no search logic."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import json
import threading
import time
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import query as q
from ..collection import DOCUMENT_TYPE, Collection, Document
from ..errors import ClipseekError, CollectionLockedError, FieldError, QueryError, VectorError, YqlSyntaxError
from ..models import get_spec, load_model
from ..models.encoder import Encoder
from ..summaries import SUMMARY_FIELDS
from ..tensors import parse_tensor, render_tensor
from . import native

MAX_BODY = 10 * 1024 * 1024
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

    def __init__(self, loader: Callable[[str], Encoder] | None = None, precision: str = "fp32") -> None:
        self._loader = loader or (lambda name: load_model(name, precision=precision))  # type: ignore[arg-type]
        self._cache: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str) -> Encoder:
        with self._lock:
            if model not in self._cache:
                self._cache[model] = self._loader(model)
            return self._cache[model]


class Shared:
    """The served collection: a reader for searches, a writer taken for document-API writes and released when
    idle, so that a `clipseek index` run can write the same collection while the server keeps answering."""

    def __init__(self, path: Path, idle_seconds: float = 20.0) -> None:
        self.path = path
        self.idle_seconds = idle_seconds
        self._reader = Collection.open(path, readonly=True)
        self._writer: Collection | None = None
        self._last_write = 0.0
        self._lock = threading.Lock()

    def for_search(self) -> Collection:
        with self._lock:
            return self._writer or self._reader

    def for_write(self) -> Collection:
        with self._lock:
            if self._writer is None:
                try:
                    self._writer = Collection.open(self.path)
                except CollectionLockedError as exc:
                    raise Busy(str(exc)) from exc
            self._last_write = time.monotonic()
            return self._writer

    def release_idle(self) -> None:
        with self._lock:
            if self._writer is not None and time.monotonic() - self._last_write > self.idle_seconds:
                self._writer.close()
                self._writer = None

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._reader.close()


class TokenAuth:
    """Every request must carry the token: a bearer header, or ``token=`` for links (images in a page)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _public(scope["path"]):
            request = Request(scope)
            given = request.headers.get("authorization", "")
            if not (hmac.compare_digest(given, f"Bearer {self.token}")
                    or hmac.compare_digest(request.query_params.get("token", ""), self.token)):
                response = JSON({"error": {"status": 401, "type": "Unauthorized",
                                           "message": "this server needs a token: send 'Authorization: Bearer TOKEN'"}},
                                status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _public(path: str) -> bool:
    """The page and its assets hold no data: served without a token (the page then sends it with every call)."""
    return path == "/" or path.startswith("/static/")


class Busy(ClipseekError):
    """Another process holds the write lock: answered with 503, which Vespa clients retry."""


async def read_body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise QueryError(f"request body of {len(body)} bytes is over the {MAX_BODY} byte limit")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise QueryError(f"body says Content-Encoding: gzip but is not gzip ({exc})") from None
    return body


def create_app(path: Path, *, encoders: Callable[[str], Encoder] | None = None,
               default_model: str = "ViT-B/32", token: str | None = None, precision: str = "fp32") -> Starlette:
    """The app serving the collection at ``path``; ``encoders(model)`` gives the text encoder for ``input=``.

    With ``token``, every route needs ``Authorization: Bearer <token>`` (or ``?token=``)."""
    encoder_for = encoders or Encoders(precision=precision)
    shared = Shared(path)
    source = "clipseek"

    async def status(_: Request) -> Response:
        return JSON({"application": {"vespa": {"version": "clipseek"}, "meta": {"name": "clipseek"}},
                     "documents": len(shared.for_search())})

    async def search(request: Request) -> Response:
        started = time.perf_counter()
        try:
            params: dict[str, str] = {}
            if request.method == "POST" and request.headers.get("content-type", "").startswith("application/json"):
                body = await read_body(request)
                if body.strip():
                    try:
                        doc = json.loads(body)
                    except ValueError as exc:
                        raise QueryError(f"the JSON body is malformed: {exc}") from None
                    if not isinstance(doc, dict):
                        raise QueryError("the JSON body must be an object of query parameters")
                    params.update(q.flatten_body(doc))
            params.update(request.query_params)
            req = q.SearchRequest.from_params(params)
            collection = shared.for_search()
            result = await asyncio.to_thread(q.run, collection, req, encoder_for, default_model)
        except YqlSyntaxError as exc:
            return search_error(3, str(exc), 400)
        except ClipseekError as exc:
            return search_error(4, str(exc), 400)
        children = []
        for hit in result.hits:
            doc_id = f"id:{hit.namespace or collection.namespace}:{DOCUMENT_TYPE}::{hit.docid}"
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
        ns = request.path_params["namespace"]
        dtype = request.path_params["doctype"]
        if dtype != DOCUMENT_TYPE:
            raise FieldError(f"Document type {dtype} does not exist: this server has only {DOCUMENT_TYPE}")
        raw = request.path_params.get("docid", "")
        return ns, urllib.parse.unquote(raw), f"id:{ns}:{DOCUMENT_TYPE}::{urllib.parse.unquote(raw)}"

    def to_document(collection: Collection, docid: str, fields: dict[str, Any]) -> Document:
        doc = Document(docid)
        for name, value in fields.items():
            if name in SUMMARY_FIELDS:
                setattr(doc, name, value)
            else:
                fname = ensure_field(collection, name)
                doc.vectors[fname] = parse_tensor(value, f"field {name}")
        return doc

    def ensure_field(collection: Collection, name: str) -> str:
        if name in collection.fields:
            return name
        if name.endswith("_image"):
            try:
                spec = get_spec(name[: -len("_image")])
            except ClipseekError:
                spec = None
            if spec is not None:
                collection.add_field(name, spec.name, spec.embed_dim)
                return name
        valid = ", ".join([*SUMMARY_FIELDS, *sorted(collection.fields)])
        raise FieldError(f"No field '{name}' in the structure of type '{DOCUMENT_TYPE}'; fields are: {valid}")

    def render_doc(doc: Document, ns: str, form: str, field_set: str | None = None) -> dict[str, Any]:
        """A document as the document API returns it; ``ns`` names it unless it was fed under its own."""
        ns = doc.namespace or ns
        if field_set == "[id]":  # Vespa's field set of ids only (`vespa visit --field-set '[id]'`)
            return {"id": f"id:{ns}:{DOCUMENT_TYPE}::{doc.docid}"}
        fields: dict[str, Any] = dict(doc.attributes())
        for name, vec in doc.vectors.items():
            fields[name] = render_tensor(vec, form)
        return {"id": f"id:{ns}:{DOCUMENT_TYPE}::{doc.docid}", "fields": fields}

    async def document(request: Request) -> Response:
        path = request.url.path
        try:
            ns, docid, full_id = doc_path(request)
            if not docid:
                if request.method in ("GET", "DELETE"):
                    return await visit(request)
                raise QueryError("empty document id")
            form = request.query_params.get("format.tensors", "short")
            if request.method == "GET":
                doc = await asyncio.to_thread(shared.for_search().get, docid)
                if doc is None:
                    return JSON({"pathId": path, "id": full_id}, status_code=404)
                doc.namespace = None  # a get answers with the id it was asked for
                return JSON({"pathId": path, **render_doc(doc, ns, form)})
            collection = shared.for_write()
            if request.method == "DELETE":
                await asyncio.to_thread(collection.remove, docid)
                return JSON({"pathId": path, "id": full_id})
            body = await read_body(request)
            try:
                payload = json.loads(body or b"{}")
            except ValueError as exc:
                raise QueryError(f"the JSON body is malformed: {exc}") from None
            fields = payload.get("fields", {}) if isinstance(payload, dict) else None
            if not isinstance(fields, dict):
                raise QueryError("the body must be a JSON object with a 'fields' object")
            if request.method == "POST":
                doc = to_document(collection, docid, fields)
                doc.namespace = ns
                await asyncio.to_thread(collection.put, doc)
                return JSON({"pathId": path, "id": full_id})
            create = request.query_params.get("create", "false").lower() == "true"
            attributes, vectors = {}, {}
            for name, op in fields.items():
                if not isinstance(op, dict) or set(op) != {"assign"}:
                    raise QueryError(f"field {name}: only {{\"assign\": value}} updates are supported")
                if name in SUMMARY_FIELDS:
                    attributes[name] = op["assign"]
                else:
                    fname = ensure_field(collection, name)
                    vectors[fname] = parse_tensor(op["assign"], f"field {name}")
            await asyncio.to_thread(collection.update, docid, attributes=attributes, vectors=vectors, create=create,
                                    namespace=ns)
            return JSON({"pathId": path, "id": full_id})
        except Busy as exc:
            return doc_error(path, str(exc), 503)
        except (FieldError, QueryError, VectorError) as exc:
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
        return await visit(request, shared.for_search().namespace)

    async def visit(request: Request, namespace: str | None = None) -> Response:
        """Visit (or delete) in id order: ``/document/v1/<ns>/<type>/docid/`` the documents of that namespace, as
        Vespa does; the cluster-wide visit (``namespace`` given: the collection's, for ids) every namespace's."""
        path = request.url.path
        try:
            ns = namespace or doc_path(request)[0]
            scoped = namespace is None
            cont = request.query_params.get("continuation")
            start = int(cont) if cont and cont.isdigit() else 0
            wanted = min(max(int(request.query_params.get("wantedDocumentCount", "100") or 100), 1), 1000)
            form = request.query_params.get("format.tensors", "short")
            slices = int(request.query_params.get("slices", "1") or 1)
            slice_id = int(request.query_params.get("sliceId", "0") or 0)
            if slices < 1 or not 0 <= slice_id < slices:
                raise QueryError(f"sliceId must be in 0..slices-1 and slices >= 1, got sliceId={slice_id} "
                                 f"slices={slices}")
        except (ValueError, FieldError, QueryError) as exc:
            return doc_error(path, str(exc), 400)
        reader = shared.for_search()
        only = None if ns == reader.namespace else ns  # stored as NULL: the collection's own namespace
        docs, nxt = await asyncio.to_thread(lambda: reader.visit(continuation=start, count=wanted, only_namespace=scoped,
                                                                 namespace=only, slices=slices, slice_id=slice_id))
        if request.method == "DELETE":
            try:
                writer = shared.for_write()
            except Busy as exc:
                return doc_error(path, str(exc), 503)
            for d in docs:
                await asyncio.to_thread(writer.remove, d.docid)
            nxt = start if nxt is not None else None  # removed rows no longer precede the cursor
        field_set = request.query_params.get("fieldSet")
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

    async def fallback(request: Request, exc: Exception) -> Response:
        return search_error(18, f"internal error: {type(exc).__name__}: {exc}", 500)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async def janitor() -> None:
            while True:
                await asyncio.sleep(2)
                await asyncio.to_thread(shared.release_idle)
        task = asyncio.create_task(janitor())
        try:
            yield
        finally:
            task.cancel()
            shared.close()

    routes += native.routes(shared.for_search, encoder_for, default_model)
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
    middleware = [Middleware(TokenAuth, token=token)] if token else []
    app = Starlette(routes=routes, exception_handlers={Exception: fallback}, lifespan=lifespan,
                    middleware=middleware)
    app.state.shared = shared
    return app

