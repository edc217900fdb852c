"""What the handlers share, kept on ``request.app.state`` as Starlette intends: the served collection
(:class:`Shared`: a reader, and a writer opened on demand), the text encoders by model (``encoder_for``) and the
default model. :func:`clipseek.server.app.create_app` puts them there; handlers read them with the accessors
below.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar, cast

from starlette.requests import Request

from ..collection import Collection
from ..errors import ClipseekError, CollectionLockedError
from ..models import get_spec, load_model
from ..models.encoder import Encoder

T = TypeVar("T")


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


def shared_of(request: Request) -> Shared:
    return cast(Shared, request.app.state.shared)


def encoder_for(request: Request) -> Callable[[str], Encoder]:
    """The text encoder of a model (loaded once per server)."""
    return cast(Callable[[str], Encoder], request.app.state.encoder_for)


def default_model(request: Request) -> str:
    return cast(str, request.app.state.default_model)


async def _in_thread(hold: Callable[[], contextlib.AbstractContextManager[Collection]],
                     fn: Callable[[Collection], T]) -> T:
    def go() -> T:
        with hold() as coll:
            return fn(coll)
    return await asyncio.to_thread(go)


async def read(request: Request, fn: Callable[[Collection], T]) -> T:
    """``fn(collection)`` in a worker thread, holding the served collection for reading."""
    return await _in_thread(shared_of(request).reading, fn)


async def write(request: Request, fn: Callable[[Collection], T]) -> T:
    """``fn(writer)`` in a worker thread, holding the writer."""
    return await _in_thread(shared_of(request).writing, fn)


__all__ = ["Busy", "Encoders", "Shared", "default_model", "encoder_for", "read", "shared_of",
           "tuned_text_model", "write"]
