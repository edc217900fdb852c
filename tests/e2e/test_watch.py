"""`clipseek index PATH --watch`: a real process following a real folder, checked through the collection."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipseek.collection import Collection
from clipseek.indexer import docid_for
from clipseek.watch import FolderWatcher, needs_polling

from ..imagegen import scene_image


def png_bytes(i: int, size: int = 256) -> bytes:
    buf = io.BytesIO()
    scene_image(i).resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


class Watching:
    """`clipseek index FOLDER --watch ...` in a process of its own, its stderr read line by line."""

    def __init__(self, folder: Path, collection: Path, *extra: str) -> None:
        self.collection = collection
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipseek.cli", "index", str(folder), "--collection", str(collection),
             "--model", "tiny", "--watch", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_line("watching ", 60)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.seen)
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout} s:\n{''.join(self.seen)}")

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def doc(self, path: Path):
        with Collection.open(self.collection, readonly=True) as coll:
            return coll.get(docid_for(os.fsencode(os.path.abspath(path))))

    def wait_for(self, path: Path, present: bool, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if (self.doc(path) is not None) == present:
                return time.monotonic() - started
            assert self.proc.poll() is None, "".join(self.seen)
            time.sleep(0.1)
        raise AssertionError(f"{path} {'never appeared' if present else 'never left'} in {timeout} s; the watcher "
                             f"printed:\n{self.output()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=20)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(png_bytes(i))
    for i in range(2):
        (folder / "trip" / f"t{i}.png").write_bytes(png_bytes(10 + i))
    return folder


def test_watch_follows_new_changed_moved_and_deleted_files(library, tmp_path):
    w = Watching(library, tmp_path / "coll", "--exclude", "drafts")
    try:
        assert w.doc(library / "p0.png") is not None  # the first full pass

        new = library / "new.png"
        new.write_bytes(png_bytes(20))
        assert w.wait_for(new, True, 5) <= 5.0  # searchable within 5 s of being written

        # a file written in two halves with a pause shorter than --settle: indexed once, whole
        slow, data = library / "slow.png", png_bytes(21, 900)
        with open(slow, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(0.6)
            fh.write(data[len(data) // 2:])
        w.wait_for(slow, True, 8)
        assert w.doc(slow).content_hash == hashlib.sha256(data).hexdigest()

        # excluded and hidden files never arrive (written before the move below, which is seen after them)
        (library / "drafts").mkdir()
        (library / "drafts" / "d.png").write_bytes(png_bytes(22))
        (library / ".cache").mkdir()
        (library / ".cache" / "h.png").write_bytes(png_bytes(23))

        # a move reuses the vector
        before = w.doc(library / "p1.png").vectors["tiny_image"]
        moved = library / "trip" / "p1-moved.png"
        os.rename(library / "p1.png", moved)
        w.wait_for(moved, True, 8)
        w.wait_for(library / "p1.png", False, 8)
        np.testing.assert_array_equal(w.doc(moved).vectors["tiny_image"], before)
        time.sleep(0.3)
        assert "1 reused" in w.output(), w.output()

        (library / "p2.png").unlink()
        w.wait_for(library / "p2.png", False, 8)

        shutil.rmtree(library / "trip")  # a watched subfolder deleted whole
        w.wait_for(library / "trip" / "t0.png", False, 8)
        w.wait_for(moved, False, 8)

        assert w.doc(library / "drafts" / "d.png") is None and w.doc(library / ".cache" / "h.png") is None
        assert not (tmp_path / "coll" / "index-failures.log").exists()
    finally:
        code = w.stop()
    assert code == 0, "".join(w.seen)


def test_a_bad_file_or_a_vanished_one_is_reported_and_watching_goes_on(library, tmp_path):
    w = Watching(library, tmp_path / "coll")
    try:
        (library / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        w.wait_line("1 failed", 10)
        w.wait_line("broken.png", 5)
        later = library / "later.png"
        later.write_bytes(png_bytes(30))
        w.wait_for(later, True, 5)
        shutil.rmtree(library)  # the watched folder itself
        w.wait_for(later, False, 8)
        w.wait_line("was deleted", 5)
        assert w.proc.poll() is None
    finally:
        code = w.stop()
    assert code == 0, "".join(w.seen)


def test_watching_by_polling_finds_new_files(library, tmp_path):
    w = Watching(library, tmp_path / "coll", "--poll")
    try:
        assert "scanning every 2 s" in w.output()
        new = library / "new.png"
        new.write_bytes(png_bytes(35))
        w.wait_for(new, True, 30)  # a scan every 2 s, then the model loads: slow on a loaded machine
    finally:
        w.stop()


def test_network_file_systems_are_polled():
    mounts = ("/dev/vda1 / ext4 rw 0 0\n"
              "server:/export /mnt/photos nfs4 rw 0 0\n"
              "//nas/share /mnt/nas\\040box cifs rw 0 0\n")
    assert "nfs4" in needs_polling([Path("/mnt/photos/2024")], mounts)
    assert "cifs" in needs_polling([Path("/mnt/nas box/x")], mounts)
    assert needs_polling([Path("/home/me/Pictures")], mounts) is None
    assert needs_polling([Path("/mnt/photosynth")], mounts) is None  # a prefix of the name is not the mount
    # the deepest mount point wins, whatever order the table lists them in
    assert needs_polling([Path("/srv/nfs/pics")], "nfs:/x /srv/nfs nfs rw 0 0\n/dev/vdb /srv ext4 rw 0 0\n")


@pytest.mark.parametrize("poll", [False, True], ids=["events", "polling"])
def test_a_file_written_as_soon_as_the_watch_starts_is_not_missed(tmp_path, poll, monkeypatch):
    """start() returns once the watch is in place (the first full pass runs after it): a file written right then
    raises an event. Returning as soon as the thread started lost such a file on a loaded machine, where the
    thread set its watch up late: the pass had listed the folder before the file came, the watch saw it as there
    from the start. The real watchfiles watches here, set up a second late as on that machine."""
    import watchfiles

    real = watchfiles.watch

    def late(*args, **kwargs):
        time.sleep(1.0)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(watchfiles, "watch", late)
    folder = tmp_path / "photos"
    folder.mkdir()
    got: list[Path] = []
    watcher = FolderWatcher([folder], got.extend, settle=0.2, poll=poll, say=lambda _m: None)
    watcher.start()
    (folder / "new.png").write_bytes(png_bytes(37))
    runner = threading.Thread(target=watcher.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    watcher.stop.set()
    runner.join(10)
    assert got == [folder / "new.png"]


def test_serve_watch_answers_follow_the_folder(library, tmp_path):
    """`clipseek serve --watch`: indexed at start, and a photo added while serving is in the answers within 5 s."""
    import json
    import urllib.error
    import urllib.request

    from ..serving import running_server

    def has(url: str, path: Path) -> bool:
        docid = docid_for(os.fsencode(os.path.abspath(path)))
        try:
            with urllib.request.urlopen(f"{url}/document/v1/default/image_search/docid/{docid}", timeout=5) as r:
                return json.loads(r.read())["fields"]["path"] == str(path)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            return False

    def wait(url: str, path: Path, present: bool, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if has(url, path) == present:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"{path} {'never appeared' if present else 'never left'} in {timeout} s")

    with running_server(tmp_path / "coll", tmp_path, "--model", "tiny", "--watch", str(library)) as (url, _port):
        wait(url, library / "trip" / "t1.png", True, 30)  # the first pass, in the background
        new = library / "new.png"
        new.write_bytes(png_bytes(25))
        assert wait(url, new, True, 5) <= 5.0
        (library / "p0.png").unlink()
        wait(url, library / "p0.png", False, 8)
        body = json.dumps({"yql": "select * from image_search where true", "hits": 20}).encode()
        request = urllib.request.Request(f"{url}/search/", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            paths = {h["fields"]["path"] for h in json.loads(r.read())["root"].get("children", [])}
        assert str(new) in paths and str(library / "p0.png") not in paths and len(paths) == 5


def test_without_file_events_it_falls_back_to_scanning_and_says_so(library, tmp_path):
    """inotify refused for real: this process holds every inotify instance the user may have (the kernel's
    max_user_instances) while the watcher starts, so watchfiles cannot create one and clipseek must poll."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    held = []
    try:
        while len(held) < 100_000:
            fd = libc.inotify_init1(0)
            if fd < 0:
                break
            held.append(fd)
        assert held, "could not take any inotify instance"
        w = Watching(library, tmp_path / "coll")  # its first "watching" line may be the fallback's own
        if "scanning every 2 s instead" not in w.output():
            w.wait_line("scanning every 2 s instead", 20)
    finally:
        for fd in held:
            os.close(fd)
    try:
        new = library / "new.png"
        new.write_bytes(png_bytes(36))
        w.wait_for(new, True, 10)
    finally:
        code = w.stop()
    assert code == 0, w.output()
