"""Progress for long work: a bar on a terminal, a plain line every few seconds otherwise (logs, cron)."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from tqdm import tqdm


def reporter(label: str, *, every: float = 5.0, stream=None) -> tuple[Callable[[int, int], None], Callable[[], None]]:  # type: ignore[no-untyped-def]
    """(update(done, total), close()) — update may be called with the same total many times. Off a terminal,
    a line at most every ``every`` seconds (CLIPSEEK_PROGRESS_SECONDS overrides; 0: after every batch, which
    scripts can wait on, since the indexer reports a batch once it is committed)."""
    out = stream or sys.stderr
    every = float(os.environ.get("CLIPSEEK_PROGRESS_SECONDS", every))
    if out.isatty():
        bar: tqdm[int] | None = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="img", desc=label, file=out, dynamic_ncols=True)
            bar.total = total
            bar.update(done - bar.n)

        def close() -> None:
            if bar is not None:
                bar.close()
        return update, close

    start = time.perf_counter()
    last = [0.0]

    def plain(done: int, total: int) -> None:
        now = time.perf_counter()
        if total and (now - last[0] >= every or done == total) and done > 0:
            last[0] = now
            rate = done / max(now - start, 1e-9)
            eta = (total - done) / rate if rate else 0
            print(f"{label}: {done}/{total} ({rate:.1f}/s, ETA {eta:.0f}s)", file=out, flush=True)

    return plain, lambda: None


def list_failures(failed: list[tuple[str, str]], where_the_rest: str, *, limit: int = 50) -> None:
    """The first ``limit`` failures as ``failed: PATH: reason`` lines on stderr, then where to find the rest."""
    import click

    for path, reason in failed[:limit]:
        click.echo(f"  failed: {path}: {reason}", err=True)
    if len(failed) > limit:
        click.echo(f"  ... {len(failed) - limit} more {where_the_rest}", err=True)


def list_metadata(skipped: list[tuple[str, str]], *, limit: int = 20) -> None:
    """Photos indexed without some EXIF fields (an impossible date, malformed GPS), and why, on stderr."""
    import click

    for path, why in skipped[:limit]:
        click.echo(f"  indexed without some EXIF: {path}: {why}", err=True)
    if len(skipped) > limit:
        click.echo(f"  ... {len(skipped) - limit} more indexed without some EXIF", err=True)
