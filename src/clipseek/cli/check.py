"""``clipseek check``: verify a collection, and repair what is derived."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .search import collection_option, collection_path


@click.command("check")
@collection_option
@click.option("--repair", is_flag=True,
              help="Take the write lock and fix what can be fixed: rebuild norms, checksums and graph snapshots; "
                   "drop vectors that are lost, so the next `clipseek index` re-embeds those images.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_command(collection_dir: Path | None, repair: bool, as_json: bool) -> None:
    """Verify a collection: SQLite's integrity, vector files against their
    slots and checksums, norms, and graph snapshots.

    \b
    Exit status: 0 when sound (or repaired), 1 when problems remain.
      clipseek check
      clipseek check --repair && clipseek index ~/Pictures
    """
    from ..check import check

    path = collection_path(collection_dir)
    report = check(path, repair=repair)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1))
    else:
        for problem in report.problems:
            mark = "repaired" if problem in report.repaired else "problem"
            click.echo(f"{mark}: {problem}")
        for item in report.reindex[:20]:
            click.echo(f"  re-index: {item}")
        if len(report.reindex) > 20:
            click.echo(f"  ... and {len(report.reindex) - 20} more")
        if not report.problems:
            click.echo(f"{path}: {report.documents} documents, no problems found")
        elif report.ok:
            click.echo(f"{path}: repaired" + (f"; run `clipseek index` over your folders to re-embed "
                                              f"{len(report.reindex)} images" if report.reindex else ""))
        else:
            click.echo(f"{path}: problems found; `clipseek check --repair` fixes what can be fixed", err=True)
    if not report.ok:
        sys.exit(1)
