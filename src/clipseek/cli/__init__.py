"""The ``clipseek`` command: thin adapters over the library, one module per command group."""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

import click

from .. import __version__
from ..errors import ClipseekError


class Group(click.Group):
    """Turns a :class:`ClipseekError`, and the operating system's own errors (disk full, permissions, a file
    that vanished), into a one-line message naming the file and exit status 1: no traceback on bad input."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipseekError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(os_message(exc)) from exc
        except sqlite3.Error as exc:
            text = str(exc)
            if "full" in text:
                text = "disk full while writing the collection: nothing committed was lost; free space and re-run"
            elif "readonly" in text or "permission" in text.lower() or "unable to open" in text:
                text = f"cannot write the collection ({text}): check the permissions of its folder and files"
            raise click.ClickException(text) from exc


def os_message(exc: OSError) -> str:
    """An OSError as one line that names the file and says what to do."""
    name = exc.filename if exc.filename is not None else ""
    where = f"{os.fsdecode(name)}: " if name != "" else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full: {where}free space and re-run (what was committed is kept)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}check that you may read (and write) it"
    if exc.errno == errno.ENOENT:
        return f"no such file or folder: {where.rstrip(': ') or exc.strerror}"
    return f"{where}{exc.strerror or exc}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipseek")
def main() -> None:
    """Search your own images by describing them.

    \b
    Try it offline in one step:   clipseek demo
    Index a folder:               clipseek index ~/Pictures
    Search it:                    clipseek search "a dog on a beach"
    """


def _register() -> None:
    from .check import check_command
    from .data import synth_command, train_tiny_command
    from .demo import demo_command
    from .duplicates import duplicates_command
    from .embed import embed_command, import_command
    from .evaluate import eval_command
    from .finetune import finetune_command
    from .models import models
    from .search import index_command, search_command
    from .serve import serve_command
    from .vespa import vespa_group

    main.add_command(index_command)
    main.add_command(search_command)
    main.add_command(duplicates_command)
    main.add_command(serve_command)
    main.add_command(check_command)
    main.add_command(demo_command)
    main.add_command(eval_command)
    main.add_command(vespa_group)
    main.add_command(models)
    main.add_command(synth_command)
    main.add_command(train_tiny_command)
    main.add_command(finetune_command)
    main.add_command(embed_command)
    main.add_command(import_command)


_register()
