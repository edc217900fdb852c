"""Where clipseek keeps things: one home for collections, one cache for models.

``CLIPSEEK_HOME`` overrides the data directory (default collection lives there);
``CLIPSEEK_CACHE`` overrides the model cache (exported ONNX towers).
"""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    env = os.environ.get("CLIPSEEK_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "clipseek"


def cache_dir() -> Path:
    env = os.environ.get("CLIPSEEK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clipseek"


def default_collection() -> Path:
    return home_dir() / "collection"
