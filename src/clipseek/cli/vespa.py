"""``clipseek vespa``: when a collection outgrows one machine — export it as a Vespa application, feed it."""

from __future__ import annotations

from pathlib import Path

import click

from .search import collection_option, collection_path


@click.group("vespa")
def vespa_group() -> None:
    """Move a collection to a Vespa cluster; clients and queries stay the same."""


@vespa_group.command("export")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@collection_option
@click.option("--nodes", default=1, show_default=True, help="Container and content nodes.")
@click.option("--redundancy", default=1, show_default=True, help="Copies of each document in the content cluster.")
def export_command(out: Path, collection_dir: Path | None, nodes: int, redundancy: int) -> None:
    """Write a Vespa application package for the collection to OUT.

    schemas/image_search.sd has image_file_name, the file attributes and one
    HNSW tensor field per model with a <slug>_similarity rank profile; services.xml
    a container (search + document-api) and a content cluster.
    Deploy it with `vespa deploy OUT`, then `clipseek vespa feed --url ...`.
    """
    from ..collection import Collection
    from ..vespa import export_package

    with Collection.open(collection_path(collection_dir), readonly=True) as coll:
        for path in export_package(coll, out, nodes=nodes, redundancy=redundancy):
            click.echo(str(path))


@vespa_group.command("feed")
@click.option("--url", required=True, help="Vespa endpoint, e.g. http://localhost:8080 or a Vespa Cloud URL.")
@collection_option
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="Data-plane certificate (Vespa Cloud).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Its private key.")
@click.option("--token", envvar="VESPA_CLOUD_SECRET_TOKEN", help="Vespa Cloud data-plane token.")
def feed_command(url: str, collection_dir: Path | None, cert: str | None, key: str | None, token: str | None) -> None:
    """Feed every document and vector of the collection to URL (re-running is safe: puts are idempotent)."""
    from ..collection import Collection
    from ..vespa import feed_collection
    from .progress import reporter

    update, close = reporter("feeding")
    with Collection.open(collection_path(collection_dir), readonly=True) as coll:
        report = feed_collection(coll, url, cert=cert, key=key, token=token, progress=update)
    close()
    click.echo(f"{report.ok} fed, {len(report.failed)} failed")
    for docid, reason in report.failed[:20]:
        click.echo(f"  failed: {docid}: {reason}", err=True)
    if report.failed:
        raise SystemExit(1)
