from __future__ import annotations

import importlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# A test run started in the background from a script (``cmd &`` without job control, as under nohup) inherits
# SIGINT ignored, and so would every command a test starts: the tests that press Ctrl-C on `clipseek index` would
# wait for an interrupt that never comes. The run gets Python's Ctrl-C back; the commands it starts, the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
FLICKR = Path(os.environ.get("CLIPSEEK_FLICKR8K", REPO.parent / "shared" / "data" / "flickr8k"))
#: Under CI (``.ci/run`` sets CI=true) a part the tests need fails the run instead of skipping: a skipped test
#: proves nothing and would hide a broken install.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str, install: str) -> None:
    """A part the tests need is not here: fail under CI, skip elsewhere (module level too)."""
    message = f"{what} is missing: {install}"
    if IN_CI:
        pytest.fail(f"{message} (under CI a missing part fails the run)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def need_module(name: str, install: str = "`make test` installs it (requirements/test.txt, the extras)") -> ModuleType:
    """``importlib.import_module(name)``, or :func:`missing`."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name}", install)
        raise


@pytest.fixture(autouse=True, scope="session")
def compiled_walks() -> None:
    """Searches in the test process walk the graph as a server's do, with the compiled walks, from the first (a
    process loads them on its own only at its WARM_AFTER-th graph search). faiss's walks, which a one-off search
    takes, run in the CLI's processes and in the tests that turn the compiled ones off (tests/unit/test_walks.py)."""
    from clipseek import hnsw

    hnsw.load_walks()


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Every test gets its own data home and model cache; nothing touches ~/.cache or ../shared."""
    base = tmp_path_factory.mktemp("clipseek-env")
    monkeypatch.setenv("CLIPSEEK_HOME", str(base / "home"))
    monkeypatch.setenv("CLIPSEEK_CACHE", str(base / "cache"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def scratch(tmp_path_factory, name: str) -> Iterator[Path]:
    """A module fixture's folder, removed when the fixture ends: the exported towers take GBs of disk."""
    path = tmp_path_factory.mktemp(name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def flickr() -> Path:
    if not (FLICKR / "captions.txt").is_file():
        missing(f"the Flickr8k copy at {FLICKR}", "set CLIPSEEK_FLICKR8K to it")
    return FLICKR


def flickr_captions(root: Path) -> list[str]:
    with open(root / "captions.txt", encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t", 1)[1] for line in fh if "\t" in line]


def indexed_gallery(base: Path, n: int, seed: int, model=None) -> tuple[Path, Path]:
    """A `clipseek synth` gallery of ``n`` images under ``base/g``, indexed with the tiny model into ``base/c``."""
    from clipseek import load_model, synth
    from clipseek.collection import Collection
    from clipseek.indexer import Indexer

    gallery = synth.write_dataset(base / "g", n, seed=seed)
    with Collection.create(base / "c") as coll:
        Indexer(coll, model or load_model("tiny")).run([gallery / "images"])
    return gallery, base / "c"
