"""What every request passes before a handler sees it: who may ask, and how much they may send.

A local server that serves photos is a target for any web page its user opens, so (in this order):

- **Host.** Without a token, a request whose ``Host`` is not an address this server answers to (the loopback
  names, the bound address, and ``--allow-host`` names) is refused with 403. A page on another site that
  re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name as ``Host``, so it cannot read answers.
  With a token there is nothing to rebind to: the page does not have the token.
- **Origin.** A request that can change something (every method but GET, HEAD and OPTIONS) carrying an
  ``Origin`` other than the server's own is refused with 403: browsers send ``Origin`` on cross-site writes,
  clients like pyvespa and the ``vespa`` CLI send none.
- **Token.** With ``token``, every request but the page's static files carries ``Authorization: Bearer TOKEN``
  (or ``?token=``, for images in the page); compared as bytes in constant time, so any header (non-ASCII too)
  gets a 401, never an error.
- **Size.** A body is read at most ``max_body`` bytes: a larger ``Content-Length`` is refused at once with 413,
  and a chunked body that grows past it fails its handler's read with :class:`TooLargeError` (413).
"""

from __future__ import annotations

import hmac
import json
import urllib.parse
from typing import Any, Iterable

from ..errors import TooLargeError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _host_name(value: str) -> str:
    """``example.com:8080`` → ``example.com``; ``[::1]:8080`` → ``::1``; lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1: value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _reply(status: int, message: str) -> tuple[int, bytes]:
    kind = {401: "Unauthorized", 403: "Forbidden", 413: "PayloadTooLarge"}.get(status, "Error")
    body = {"error": {"status": status, "type": kind, "message": message}}
    return status, json.dumps(body).encode()


class Guard:
    """ASGI middleware doing the checks of this module's docstring, in that order."""

    def __init__(self, app: Any, *, token: str | None = None, allow_hosts: Iterable[str] = (),
                 max_body: int = 10 * 1024 * 1024) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        hosts = {_host_name(h) for h in allow_hosts}
        self.any_host = "*" in hosts
        self.hosts = hosts | set(LOOPBACK_NAMES)
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            status, body = refused
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, self.capped(receive), send)

    def refusal(self, scope: Any) -> tuple[int, bytes] | None:
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        if self.token is None and not self.any_host and _host_name(host) not in self.hosts:
            return _reply(403, f"Host {host!r} is not an address this server answers to: open it as "
                               f"http://127.0.0.1:PORT/, or start it with --allow-host {_host_name(host) or 'NAME'}")
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            parsed = urllib.parse.urlsplit(origin.decode("latin-1"))
            if parsed.netloc.lower() != host.lower():
                return _reply(403, f"a {scope['method']} from the web page at {origin.decode('latin-1')!r} is "
                                   "refused: this server takes writes from its own page and from API clients only")
        if self.token is not None and not _public(scope["path"]):
            given = headers.get(b"authorization", b"")
            # percent-decoded byte for byte (Latin-1 maps each to one character), so a UTF-8 token matches as bytes
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), encoding="latin-1")
            param = query.get("token", [""])[0].encode("latin-1")
            if not (hmac.compare_digest(given, b"Bearer " + self.token) or hmac.compare_digest(param, self.token)):
                return _reply(401, "this server needs a token: send 'Authorization: Bearer TOKEN'")
        length = headers.get(b"content-length")
        if length is not None:
            text = length.decode("latin-1").strip()
            if not text.isdigit() or len(text) > 18:
                return _reply(400, f"Content-Length {text!r} is not a byte count")
            if int(text) > self.max_body:
                return _reply(413, f"request body of {int(text)} bytes is over the {self.max_body} byte limit")
        return None

    def capped(self, receive: Any) -> Any:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLargeError(f"request body is over the {limit} byte limit")
            return message
        return wrapped


def _public(path: str) -> bool:
    """The page and its assets hold no data: served without a token (the page then sends it with every call)."""
    return path == "/" or path.startswith("/static/")
