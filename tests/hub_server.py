"""A stand-in for the Hugging Face hub on 127.0.0.1, speaking the part of its protocol clipseek's download uses.

``HEAD /<repo>/resolve/<revision>/<file>`` answers 302 to a CDN path with ``X-Linked-Etag`` (the file's SHA-256)
and ``X-Linked-Size``, as the hub does for large files; ``GET`` of the same path redirects too; the CDN path
serves the bytes and honours ``Range: bytes=N-`` with 206. Knobs for the failures a download meets: stop after
``truncate_after`` bytes (once), serve ``corrupt`` bytes, publish no hash.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Hub:
    files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # "<repo>/<file>" → (bytes on disk, SHA-256)
    truncate_after: int | None = None
    corrupt: bool = False
    publish_hash: bool = True
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    url: str = ""

    def add(self, repo: str, filename: str, path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        self.files[f"{repo}/{filename}"] = (path, digest.hexdigest())
        return digest.hexdigest()


def serve(hub: Hub) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def _lookup(self, prefix: str) -> tuple[Path, str] | None:
            rest = self.path[len(prefix):]
            if prefix == "/":
                repo_a, repo_b, resolve, _rev, *name = rest.split("/")
                if resolve != "resolve":
                    return None
                rest = f"{repo_a}/{repo_b}/{'/'.join(name)}"
            return hub.files.get(rest)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            if self.path.startswith("/cdn/"):
                return self._bytes(self._lookup("/cdn/"), head)
            found = self._lookup("/")
            if found is None:
                self.send_error(404)
                return
            repo_a, repo_b, _resolve, _rev, *name = self.path[1:].split("/")
            self.send_response(302)
            self.send_header("Location", f"/cdn/{repo_a}/{repo_b}/{'/'.join(name)}")
            if hub.publish_hash:
                self.send_header("X-Linked-Etag", f'"{found[1]}"')
                self.send_header("X-Linked-Size", str(found[0].stat().st_size))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _bytes(self, found: tuple[Path, str] | None, head: bool) -> None:
            if found is None:
                self.send_error(404)
                return
            data = found[0].read_bytes()
            if hub.corrupt:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            start = 0
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                start = int(wanted[6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            body = data[start:]
            if hub.truncate_after is not None:
                body, hub.truncate_after = body[:hub.truncate_after], None
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
