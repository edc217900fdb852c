"""A real `clipseek serve` subprocess on 127.0.0.1 for the tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(base: Path) -> dict[str, str]:
    """The tests' own data home and model cache, for every clipseek subprocess."""
    return dict(os.environ, CLIPSEEK_HOME=str(base / "home"), CLIPSEEK_CACHE=str(base / "cache"))


@contextlib.contextmanager
def running_server(collection: Path, base: Path, *args: str) -> Iterator[tuple[str, int]]:
    """Start `clipseek serve` on a free port, wait until it answers, yield (url, port), stop it."""
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "clipseek.cli", "serve", "--collection", str(collection),
                                 "--port", str(port), *args], env=env_for(base), stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/ApplicationStatus", timeout=1)
                    break
                except urllib.error.HTTPError:  # it answers (401 with --token): up
                    break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        log.seek(0)
                        pytest.fail("clipseek serve did not start: " + log.read()[-2000:])
                    time.sleep(0.2)
            yield url, port
        finally:
            proc.terminate()
            proc.wait(10)
