"""The ``clipseek`` command: thin adapters over the library, one module per command group."""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from ..errors import ClipseekError


class Group(click.Group):
    """Turns a :class:`ClipseekError` into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipseekError as exc:
            raise click.ClickException(str(exc)) from exc


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
    from .data import synth_command, train_tiny_command
    from .demo import demo_command
    from .evaluate import eval_command
    from .models import models
    from .search import index_command, search_command
    from .serve import serve_command
    from .vespa import vespa_group

    main.add_command(index_command)
    main.add_command(search_command)
    main.add_command(serve_command)
    main.add_command(demo_command)
    main.add_command(eval_command)
    main.add_command(vespa_group)
    main.add_command(models)
    main.add_command(synth_command)
    main.add_command(train_tiny_command)


_register()
