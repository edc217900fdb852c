"""Request bodies, bounded: streamed with a cap on bytes read, gunzipped with a cap on bytes produced (off the
event loop), and parsed as JSON with a cap on nesting. Every overrun is a :class:`TooLargeError` (413) or a
:class:`QueryError` (400), never a 500 or a process that swells to gigabytes."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

from starlette.requests import Request

from ..errors import QueryError, TooLargeError

MAX_BODY = 10 * 1024 * 1024  # bytes read, and bytes after decompression
MAX_JSON_DEPTH = 64


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, at most ``limit`` bytes as sent and as decompressed (``Content-Encoding: gzip``)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise QueryError(f"Content-Encoding {encoding!r} is not supported: send gzip or no encoding")
    return await asyncio.to_thread(gunzip, body, limit)


def gunzip(data: bytes, limit: int = MAX_BODY) -> bytes:
    """Decompress gzip ``data``, refusing to produce more than ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise TooLargeError(f"request body is over the {limit} byte limit once decompressed")
        out += inflater.flush()
    except zlib.error as exc:
        raise QueryError(f"body says Content-Encoding: gzip but is not gzip ({exc})") from None
    if not inflater.eof:
        raise QueryError("body says Content-Encoding: gzip but the gzip stream is truncated")
    if len(out) > limit:
        raise TooLargeError(f"request body is over the {limit} byte limit once decompressed")
    return out


def loads_json(body: bytes | str, what: str = "the JSON body") -> Any:
    """JSON text → value; malformed, non-finite-overflowing or nested deeper than MAX_JSON_DEPTH is a QueryError."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise QueryError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"{what} is malformed: {exc}") from None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise QueryError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return value


def is_json(request: Request) -> bool:
    """Whether the request declares a JSON body (``application/json``, ``…+json``, any parameters)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))
