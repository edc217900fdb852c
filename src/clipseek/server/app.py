"""The ASGI app (Starlette): routing, middleware and lifespan. Handlers live in modules by API —
:mod:`.search` and :mod:`.document` (Vespa's), :mod:`.native` (the page's) — render through :mod:`.rendering`, and
read what they share from ``request.app.state`` (:mod:`.state`); none of them holds search logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import TooLargeError
from ..hnsw import load_walks
from ..models.encoder import Encoder
from . import document, native, search
from .guard import Guard
from .rendering import JSON, search_error
from .state import Busy, Encoders, Shared, tuned_text_model

if TYPE_CHECKING:
    from ..watch import WatchOptions

__all__ = ["Busy", "Encoders", "Shared", "create_app", "tuned_text_model"]

WEB = Path(str(resources.files("clipseek").joinpath("web")))

ROUTES: list[BaseRoute] = [
    Route("/ApplicationStatus", document.status),
    Route("/status.html", document.status_page),
    Route("/search/", search.search, methods=["GET", "POST"]),
    Route("/search", search.search, methods=["GET", "POST"]),
    Route("/document/v1/{namespace}/{doctype}/docid/{docid:path}", document.document,
          methods=["GET", "POST", "PUT", "DELETE"]),
    Route("/document/v1/{namespace}/{doctype}/docid", document.visit, methods=["GET", "DELETE"]),
    Route("/document/v1/", document.visit_all, methods=["GET", "DELETE"]),
    *native.ROUTES,
]


async def page(request: Request) -> Response:
    """The page for browsers; for API clients, Vespa's root listing of handlers (``vespa visit`` probes it)."""
    if "text/html" in request.headers.get("accept", ""):
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})
    return JSON({"handlers": [
        {"id": "search", "class": "clipseek.server.SearchHandler", "bundle": "clipseek",
         "serverBindings": ["http://*/search/*"]},
        {"id": "document-api", "class": "clipseek.server.DocumentV1ApiHandler", "bundle": "clipseek",
         "serverBindings": ["http://*/document/v1/*"]},
    ]})



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

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async def janitor() -> None:
            while True:
                await asyncio.sleep(janitor_seconds)
                await asyncio.to_thread(shared.release_idle)
        task = asyncio.create_task(janitor())
        # the graph's compiled walks load while the server starts answering (~0.8 s, longer the first time)
        walks = threading.Thread(target=load_walks, name="clipseek-serve-walks", daemon=True)
        walks.start()
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
            walks.join(timeout=60)  # not torn down mid-import at exit
            shared.close()

    routes = [*ROUTES, Route("/", page), Mount("/static", StaticFiles(directory=WEB), name="static")]
    middleware = [Middleware(Guard, token=token, allow_hosts=allow_hosts, max_body=native.MAX_UPLOAD + 1024 * 1024)]
    app = Starlette(routes=routes, exception_handlers={TooLargeError: too_large, HTTPException: http_error,
                                                       Exception: fallback},
                    lifespan=lifespan, middleware=middleware)
    app.state.shared = shared
    app.state.encoder_for = encoder_for
    app.state.default_model = default_model
    return app
