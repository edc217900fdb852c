"""``clipseek embed`` (images → Parquet shards, here or on a Ray cluster) and ``clipseek import`` (shards → a
collection)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..models import DEFAULT_MODEL
from .options import runtime_options
from .search import collection_option, collection_path


@click.command("embed")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the shards (created; re-running with the same folder continues it).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model to embed with (see `clipseek models`).")
@click.option("--ray", "ray_address", metavar="ADDRESS|local", default=None,
              help="Run on Ray: `local` starts a cluster on this machine; else the cluster's address "
                   "(ray://head:10001, head:6379, or auto). Without it: this process, no Ray needed.")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(1),
              help="Items per Parquet shard: the unit of resuming (a killed run redoes at most the shards in flight).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per inference batch.")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Encoder actors on Ray [default: 1; one per machine or GPU on a cluster]; decoding threads "
                   "without Ray [default: number of CPUs].")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="Inference threads per encoder [default: the CPUs of the cluster / --workers].")
@click.option("--ray-stats", is_flag=True,
              help="At the end, print Ray Data's per-stage statistics (decode tasks vs encoder actors).")
@runtime_options
def embed_command(sources: tuple[str, ...], out: Path, model: str, ray_address: str | None, shard_size: int,
                  batch_size: int, workers: int | None, threads: int | None, ray_stats: bool, backend: str,
                  precision: str, device: str) -> None:
    """Embed every image SOURCE... names into Parquet shards in --out.

    \b
    SOURCE is a folder, a glob ('photos/**/*.jpg'), a .txt/.lst list of paths
    or URLs (one a line, relative to the list's folder), a .parquet list with a
    `path` or `url` column, or a URL: s3://bucket/prefix/ (any file system
    pyarrow opens, with its usual credentials), file://, https://.

    \b
    Each shard row: path, content hash, size, width, height, format, vector
    (or the reason the image failed). Vectors are the ones `clipseek index`
    would store (the same decoding, preprocessing and encoder). Re-running
    skips complete shards; only the shards in flight are redone after a kill.

    \b
    Then:  clipseek import DIR --collection C          (search it here)
           clipseek vespa feed --from DIR --url URL    (serve it on Vespa)

    \b
    Examples:
      clipseek embed ~/Pictures --out shards/
      clipseek embed s3://photos/2024/ --out shards/ --ray auto --workers 8 --device cuda
    """
    from ..embed import embed
    from .progress import list_failures, reporter

    update, close = reporter("embedding")
    runtime = {"backend": backend, "precision": precision, "device": device}
    report = embed(list(sources), out, model=model, shard_size=shard_size, batch_size=batch_size, workers=workers,
                   threads=threads, ray=ray_address, runtime=runtime, progress=update,
                   say=lambda msg: click.echo(msg, err=True), ray_stats=ray_stats)
    close()
    click.echo(report.summary())
    list_failures(report.failed, "(the `error` column of the shards lists every one)")
    if report.interrupted:
        sys.exit(130)


@click.command("import")
@click.argument("shards_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@collection_option
def import_command(shards_dir: Path, collection_dir: Path | None) -> None:
    """Load the shards `clipseek embed` wrote to DIR into the collection.

    Incremental: an image already there with the same content and this
    model's vector is left alone. Documents get the ids and attributes
    `clipseek index` gives them, so indexing the same local folder later
    embeds nothing new (and lets the page and server show the images).
    """
    from ..collection import Collection
    from ..shards import ShardSet, import_shards
    from .progress import reporter

    shards = ShardSet.open(shards_dir)
    update, close = reporter("importing")
    with Collection.open(collection_path(collection_dir), create=True) as coll:
        report = import_shards(shards, coll, progress=update)
        coll.checkpoint()
    close()
    click.echo(report.summary())
    if report.failed:
        click.echo(f"  {len(report.failed)} items had no vector when embedded, e.g. "
                   f"{report.failed[0][0]}: {report.failed[0][1]}", err=True)
