"""``clipseek serve``: the Vespa-compatible HTTP API over a collection, on Hypercorn.

Hypercorn answers HTTP/1.1 and HTTP/2 cleartext with prior knowledge on the same port: pyvespa's async feed and
query paths and `vespa feed` speak only h2c, its sync paths and `vespa query` only HTTP/1.1.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..models import DEFAULT_MODEL
from .options import runtime_options
from .search import collection_option, collection_path


@click.command("serve")
@collection_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option("--model", "default_model", default=DEFAULT_MODEL, show_default=True,
              help="Model the page and the native API (/api/) use when a request names none.")
@click.option("--token", envvar="CLIPSEEK_TOKEN", show_envvar=True, default=None,
              help="Require 'Authorization: Bearer TOKEN' on every request.")
@runtime_options
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to NAME (a host name or address in the Host header; repeatable; "
                   "'*' for any). Without a token only loopback names are answered, which stops web pages from "
                   "reading your photos through DNS rebinding.")
@click.option("--insecure", is_flag=True,
              help="Allow binding to a non-loopback address without a token: anyone who can reach the port can "
                   "search, read and change the collection and see the indexed photos. Combine with --allow-host.")
@click.option("--watch", "watch_paths", multiple=True, metavar="PATH",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index PATH with --model and keep following it while serving: new, changed, moved and deleted "
                   "photos show up in answers within seconds (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="With --watch: leave out matching files and folders.")
@click.option("--poll", is_flag=True, help="With --watch: scan every 2 s instead of using file events.")
def serve_command(collection_dir: Path | None, host: str, port: int, default_model: str, token: str | None,
                  backend: str, precision: str, device: str, allow_hosts: tuple[str, ...], insecure: bool,
                  watch_paths: tuple[Path, ...], exclude: tuple[str, ...], poll: bool) -> None:
    """Serve Vespa's /search/ and /document/v1/ APIs over the collection.

    \b
    Safe by default on loopback: only requests addressed to 127.0.0.1,
    localhost or [::1] are answered (add names with --allow-host), writes
    from other web sites are refused, and only photos that `clipseek index`
    indexed, unchanged since, are served. Off loopback, --token is required.

    \b
    With --watch PATH it also indexes PATH (with --model) and follows it:
      clipseek serve --watch ~/Pictures --exclude '*/Thumbnails'

    \b
    pyvespa works unchanged (tested, sync and async); the vespa CLI
    speaks the same APIs:
      from vespa.application import Vespa
      Vespa("http://127.0.0.1", 8080).query(body={"queryProfile": "vit_b_32",
                                                  "input": "a child playing football"})
      vespa query -t http://127.0.0.1:8080 queryProfile=vit_b_32 'input=a child playing football'
    """
    import asyncio
    import ipaddress

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from ..collection import Collection
    from ..server import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token and not insecure:
        raise click.UsageError(f"binding to {host} exposes your photos to the network: pass --token SECRET "
                               "(or set CLIPSEEK_TOKEN), or --insecure if that is really what you want")
    path = collection_path(collection_dir)
    if not (path / "collection.sqlite").exists():
        Collection.create(path).close()
    bound = [] if host in ("0.0.0.0", "::") else [host]
    watch = None
    if watch_paths:
        from ..watch import WatchOptions

        watch = WatchOptions(tuple(watch_paths), exclude=exclude, poll=poll)
    app = create_app(path, default_model=default_model, token=token,
                     runtime={"backend": backend, "precision": precision, "device": device},
                     allow_hosts=[*bound, *allow_hosts], watch=watch, say=lambda m: click.echo(m, err=True))
    with app.state.shared.reading() as coll:
        count = len(coll)
    click.echo(f"clipseek serving {path} ({count} documents) at http://{host}:{port}/", err=True)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.loglevel = "WARNING"
    config.h11_max_incomplete_size = 64 * 1024  # request line + headers; longer is refused with 400/431
    asyncio.run(serve(app, config))  # type: ignore[arg-type]
