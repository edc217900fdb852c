"""``clipseek serve``: the Vespa-compatible HTTP API over a collection, on uvicorn."""

from __future__ import annotations

from pathlib import Path

import click

from ..models import DEFAULT_MODEL
from .search import collection_option, collection_path


@click.command("serve")
@collection_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option("--model", "default_model", default=DEFAULT_MODEL, show_default=True,
              help="Model for `input=` text queries when the rank profile names none.")
def serve_command(collection_dir: Path | None, host: str, port: int, default_model: str) -> None:
    """Serve Vespa's /search/ and /document/v1/ APIs over the collection.

    \b
    pyvespa and the vespa CLI work unchanged:
      from vespa.application import Vespa
      Vespa("http://127.0.0.1", 8080).query(body={"input": "a child playing football"})
      vespa query -t http://127.0.0.1:8080 'input=a child playing football'
    """
    import uvicorn

    from ..collection import Collection
    from ..server import create_app

    path = collection_path(collection_dir)
    if not (path / "collection.sqlite").exists():
        Collection.create(path).close()
    app = create_app(path, default_model=default_model)
    count = len(app.state.shared.for_search())
    click.echo(f"clipseek serving {path} ({count} documents) at http://{host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
