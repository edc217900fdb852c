"""Keep a collection following its folders: file events in, batches of changed paths out to the indexer.

A source of file events for the indexer, not a second indexer. Rules it keeps:

* Events come from watchfiles (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on Windows) on a
  thread of their own, debounced into sets. :meth:`FolderWatcher.start` returns once that thread's watch is in
  place (its first batch, empty or not, has come), and the first full pass runs after it: a file written before
  the watch is in place is found by the pass, one written after raises an event. (Returning as soon as the thread
  started left a gap: a file written after the pass listed its folder but before the watch was set up, or before
  the poller's first scan, was never indexed.)
* A path goes to the indexer only once it has *settled*: its size and modification time unchanged for
  ``settle`` seconds (a file still being copied is not indexed half-written), or it is gone (deleted or moved
  away). A path that is gone waits for the others still settling, so the new name of a moved file reaches the
  indexer no later than the old one leaves, and the indexer reuses its vector by content hash.
* Hidden files and folders and ``--exclude`` patterns never reach the indexer (the same rule as a full pass).
* Where events are not available — the inotify watch limit reached, or a network file system (NFS, SMB, sshfs…,
  whose changes made on other machines raise no local events) — it scans by polling instead, and says so.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .indexer import excluded

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs",
                       "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs"}
POLL_SECONDS = 2.0
READY_WAIT = 60.0  # at most this long for the watch to be in place (a folder tree the poller scans first)
MODIFIED = 2  # watchfiles.Change.modified
GONE_WAIT = 10.0
Say = Callable[[str], None]


def filesystem_of(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (from ``/proc/self/mounts``; None where there is none)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def needs_polling(roots: Sequence[Path], mounts: str | None = None) -> str | None:
    """Why these roots must be polled (a network file system named), or None when events work."""
    for root in roots:
        kind = filesystem_of(root, mounts)
        if kind in NETWORK_FILESYSTEMS:
            return f"{root} is on a network file system ({kind}): changes made elsewhere raise no events here"
    return None


@dataclass
class _Pending:
    snapshot: tuple[int, int] | None = None  # (size, mtime_ns) when last looked at
    since: float = 0.0  # when the snapshot was taken


@dataclass
class FolderWatcher:
    """Watch ``roots``; call ``on_batch(paths)`` with each batch of settled changes until ``stop`` is set."""

    roots: Sequence[Path]
    on_batch: Callable[[list[Path]], None]
    exclude: Sequence[str] = ()
    settle: float = 1.0
    poll: bool = False
    say: Say = print
    stop: threading.Event = field(default_factory=threading.Event)
    _events: queue.Queue[set[tuple[int, str]] | BaseException] = field(default_factory=queue.Queue)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    polling: bool = False

    def start(self) -> None:
        """Start collecting events and return once the watch is in place; run the first full pass after this,
        so that nothing written meanwhile is missed."""
        why = "asked for (--poll)" if self.poll else needs_polling(self.roots)
        if why:
            self.say(f"watching by scanning every {POLL_SECONDS:g} s: {why}")
        failed = self._start_thread(polling=bool(why))
        if failed is not None:
            self._fall_back(failed)

    def _fall_back(self, failed: BaseException) -> None:
        """Watch by polling after the OS refused events: inotify's watch or instance limit ("Too many open
        files"), which watchfiles raises as OSError or as its WatchfilesRustInternalError (a RuntimeError).
        Any other error, or one while polling already, is raised."""
        if not isinstance(failed, (OSError, RuntimeError)) or self.polling:
            raise failed
        self.say(f"file events are not available ({failed}): watching by scanning every {POLL_SECONDS:g} s instead")
        again = self._start_thread(polling=True)
        if again is not None:
            raise again

    def _start_thread(self, polling: bool) -> BaseException | None:
        """Start the thread and wait until its watch is in place; the error that stopped it setting one up, if any."""
        self.polling = polling
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._collect, args=(ready,), name="clipseek-watch", daemon=True)
        self._thread.start()
        try:
            return ready.get(timeout=READY_WAIT)
        except queue.Empty:  # still scanning a large tree: go on; its events still come
            return None

    def _collect(self, ready: queue.Queue[BaseException | None]) -> None:
        import watchfiles

        started = False
        try:
            for changes in watchfiles.watch(
                    *self.roots, watch_filter=self._wanted, debounce=300, step=50, stop_event=self.stop,
                    rust_timeout=500, yield_on_timeout=True, force_polling=self.polling,
                    poll_delay_ms=int(POLL_SECONDS * 1000), raise_interrupt=False, ignore_permission_denied=True):
                if not started:  # the first batch (empty after rust_timeout): the watch is in place
                    started = True
                    ready.put(None)
                self._events.put({(int(change), path) for change, path in changes})
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that decides
            if started:
                self._events.put(exc)
            else:
                started = True
                ready.put(exc)
        finally:
            if not started:  # stopped before the watch was in place
                ready.put(None)

    def _wanted(self, _change: object, path: str) -> bool:
        raw = os.fsencode(path)
        for root in self.roots:
            base = os.fsencode(os.path.abspath(root)).rstrip(b"/") + b"/"
            if raw.startswith(base):
                parts = raw[len(base):].split(b"/")
                return not any(excluded(part, b"/".join(parts[:i + 1]), self.exclude) for i, part in enumerate(parts))
        return True

    def run(self) -> None:
        """Hand settled changes to ``on_batch`` until ``stop`` is set; falls back to polling if events fail."""
        if self._thread is None:
            self.start()
        while not self.stop.is_set():
            try:
                item = self._events.get(timeout=0.25)
            except queue.Empty:
                item = set()
            if isinstance(item, BaseException):
                self._fall_back(item)  # or raises it
                continue
            for change, path in item:
                if change == MODIFIED and os.path.isdir(path):
                    continue  # its files raise their own events; a folder added or removed is walked whole
                self._pending[path] = _Pending()
            ready = self._settled()
            if ready:
                self.on_batch(ready)

    def _settled(self) -> list[Path]:
        """Paths ready for the indexer. A path that is gone waits while another is still settling (up to
        ``GONE_WAIT`` seconds): it may be the old name of a move, whose new name must reach the indexer first or
        together, so that its vector is reused rather than computed again."""
        now, ready, gone, unsettled = time.monotonic(), [], [], False
        for path, pending in list(self._pending.items()):
            try:
                st = os.stat(path)
            except OSError:  # gone: a deletion, or the old name of a move
                if not pending.since:
                    pending.since = now
                gone.append((path, pending))
                continue
            snapshot = (st.st_size, st.st_mtime_ns)
            if snapshot != pending.snapshot:
                pending.snapshot, pending.since = snapshot, now
                unsettled = True
            elif now - pending.since >= self.settle:
                ready.append(path)
            else:
                unsettled = True
        ready += [path for path, pending in gone if not unsettled or now - pending.since >= GONE_WAIT]
        for path in ready:
            del self._pending[path]
        return [Path(p) for p in sorted(ready)]


@dataclass(frozen=True)
class WatchOptions:
    """What `clipseek serve --watch` follows, and how."""

    roots: tuple[Path, ...]
    exclude: tuple[str, ...] = ()
    settle: float = 1.0
    poll: bool = False


def follow_in_server(shared: Any, model: str, options: WatchOptions, stop: threading.Event, say: Say) -> None:
    """The server's watcher thread: a full pass over the roots, then each batch of settled changes, written
    through the server's own writer (``shared.writing()``) so that searches see them at once. While another
    process holds the write lock (a `clipseek index` run), a batch waits and is tried again."""
    from .errors import ClipseekError
    from .indexer import Indexer
    from .models import get_spec, load_model
    from .server.state import Busy

    try:
        encoder = load_model(get_spec(model).image_vectors_of)
    except ClipseekError as exc:
        say(f"watch: not watching, the model cannot be loaded: {exc}")
        return
    watcher = FolderWatcher(options.roots, lambda _paths: None, exclude=options.exclude, settle=options.settle,
                            poll=options.poll, say=say, stop=stop)
    watcher.start()
    indexer: Indexer | None = None

    def write(paths: list[Path] | None) -> None:
        nonlocal indexer
        while not stop.is_set():
            try:
                with shared.writing() as coll:
                    if indexer is None:
                        indexer = Indexer(coll, encoder, exclude=options.exclude)
                    indexer.collection = coll  # the writer may have been closed while idle and opened again
                    report = indexer.run(list(options.roots)) if paths is None else indexer.update(paths)
                if paths is None or report.indexed or report.reused or report.removed or report.failed:
                    failed = "".join(f"\n  failed: {p}: {why}" for p, why in report.failed[:20])
                    say(f"watch: {report.summary()}{failed}")
                return
            except (Busy, OSError) as exc:  # another process holds the write lock, or the disk hiccuped: retry
                say(f"watch: {exc}; trying again in 2 s")
                stop.wait(2.0)
            except ClipseekError as exc:  # nothing a retry mends: say so, and go on with the next changes
                say(f"watch: these changes were not indexed: {exc}")
                return

    write(None)
    watcher.on_batch = write
    watcher.run()
