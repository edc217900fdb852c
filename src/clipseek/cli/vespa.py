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
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1),
              help="Container and content nodes.")
@click.option("--redundancy", default=1, show_default=True, type=click.IntRange(1),
              help="Copies of each document in the content cluster.")
@click.option("--embedders/--no-embedders", default=True, show_default=True,
              help="Include each model's text tower so Vespa embeds `input=` text itself.")
@click.option("--cloud", is_flag=True,
              help="For Vespa Cloud: node counts (<nodes count=N/>), no hosts.xml. Without it, several nodes are "
                   "written for a self-hosted cluster: hosts.xml and one <node hostalias=...> each.")
@click.option("--hosts", "hosts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Self-hosted: a file with one host name per content node (node0 first); without it hosts.xml "
                   "holds placeholders (nodeN.example.internal) to replace.")
@click.option("--validation-override", "overrides", multiple=True, metavar="ID",
              help="Write validation-overrides.xml allowing ID for 29 days (e.g. redundancy-one for Vespa Cloud "
                   "production with one node); repeatable.")
def export_command(out: Path, collection_dir: Path | None, nodes: int, redundancy: int, embedders: bool, cloud: bool,
                   hosts_file: Path | None, overrides: tuple[str, ...]) -> None:
    """Write a Vespa application package for the collection to OUT.

    \b
    schemas/image_search.sd      image_file_name, the file attributes, one HNSW
                                 tensor field per model, a <slug>_similarity
                                 rank profile each (closeness)
    services.xml                 container (search, document-api, one
                                 hugging-face-embedder per model) + content
    models/                      text towers (ONNX) + CLIP tokenizer.json
    search/query-profiles/       input=<text> -> embed(<slug>, @input); one
                                 profile per model: queryProfile=<slug>
    hosts.xml                    self-hosted with several nodes: their machines

    Then: `clipseek vespa deploy OUT` (Docker or Vespa Cloud) or `vespa deploy OUT`,
    and `clipseek vespa feed --url ...`.
    """
    from ..collection import Collection
    from ..vespa import export_package

    hosts = None
    if hosts_file is not None:
        hosts = [line.strip() for line in hosts_file.read_text().splitlines() if line.strip()]
    with Collection.open(collection_path(collection_dir), readonly=True) as coll:
        written = export_package(coll, out, nodes=nodes, redundancy=redundancy, embedders=embedders, cloud=cloud,
                                 hosts=hosts, validation_overrides=list(overrides) or None,
                                 progress=lambda msg: click.echo(msg, err=True))
    for path in written:
        click.echo(str(path))


@vespa_group.command("deploy")
@click.argument("app_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--docker", "target", flag_value="docker", help="Only deploy to the local Docker engine.")
@click.option("--cloud", "target", flag_value="cloud", help="Only deploy to Vespa Cloud.")
@click.option("--tenant", help="Vespa Cloud tenant (naming one picks Vespa Cloud).")
@click.option("--application", help="Vespa Cloud application.")
@click.option("--instance", default="default", show_default=True, help="Vespa Cloud instance.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Vespa Cloud API key (PEM); without it, the token from `vespa auth login` is used.")
@click.option("--port", default=8080, show_default=True, help="Local port of the Docker container.")
def deploy_command(app_dir: Path, target: str | None, tenant: str | None, application: str | None,
                   instance: str, key: Path | None, port: int) -> None:
    """Deploy APP_DIR (from `clipseek vespa export`) with pyvespa.

    Vespa Cloud when --tenant/--application are given, else a local Docker
    engine when one answers; with neither, the message says what to start.
    """
    from ..vespa.deploy import deploy_package

    done = deploy_package(app_dir, target=target or "auto", tenant=tenant,  # type: ignore[arg-type]
                          application=application, key=key, instance=instance, port=port)
    click.echo(f"deployed to {done.target}: {done.url}")
    click.echo(f"next: clipseek vespa feed --url {done.url}")


@vespa_group.command("feed")
@click.option("--url", required=True, help="Vespa endpoint, e.g. http://localhost:8080 or a Vespa Cloud URL.")
@collection_option
@click.option("--from", "shards_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Feed the shards `clipseek embed` wrote to this folder instead of a collection (one shard in "
                   "memory at a time).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="Data-plane certificate (Vespa Cloud).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Its private key.")
@click.option("--token", envvar="VESPA_CLOUD_SECRET_TOKEN", help="Vespa Cloud data-plane token.")
def feed_command(url: str, collection_dir: Path | None, shards_dir: Path | None, cert: str | None, key: str | None,
                 token: str | None) -> None:
    """Feed every document and vector of the collection (or of --from shards) to URL.

    Re-running is safe: puts are idempotent. From shards, the documents are the
    ones `clipseek index` would write (same ids and attributes); items that
    failed when embedded are counted, not fed.
    """
    from .progress import reporter

    update, close = reporter("feeding")
    if shards_dir is not None:
        if collection_dir is not None:
            raise click.UsageError("give --collection or --from, not both")
        from ..vespa import feed_shards

        report, skipped = feed_shards(shards_dir, url, cert=cert, key=key, token=token, progress=update)
    else:
        from ..collection import Collection
        from ..vespa import feed_collection

        skipped = 0
        with Collection.open(collection_path(collection_dir), readonly=True) as coll:
            report = feed_collection(coll, url, cert=cert, key=key, token=token, progress=update)
    close()
    click.echo(f"{report.ok} fed, {len(report.failed)} failed" + (f", {skipped} without a vector (failed when "
                                                                    "embedded)" if skipped else ""))
    for docid, reason in report.failed[:20]:
        click.echo(f"  failed: {docid}: {reason}", err=True)
    if report.failed:
        raise SystemExit(1)
