"""``clipseek demo``: the whole main job offline — a synthetic gallery, indexed with the bundled tiny model,
searched."""

from __future__ import annotations

import random
from pathlib import Path

import click

from .. import paths


@click.command("demo")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to put the gallery and its collection [default: $CLIPSEEK_HOME/demo].")
@click.option("--n", "n", default=200, show_default=True, help="Gallery size.")
@click.option("--queries", default=3, show_default=True, help="How many example searches to run.")
def demo_command(folder: Path | None, n: int, queries: int) -> None:
    """Try clipseek with no network: make a gallery, index it, search it.

    Uses the bundled `tiny` model, trained on synthetic shapes (not for photos).
    With network, the real thing is:  clipseek index ~/Pictures && clipseek search "..."
    """
    from .. import synth
    from ..collection import Collection
    from ..indexer import Indexer
    from ..models import load_model
    from .progress import reporter

    root = folder or paths.home_dir() / "demo"
    gallery, coll_dir = root / "gallery", root / "collection"
    if not (gallery / "captions.txt").is_file():
        click.echo(f"making {n} captioned images in {gallery}")
        synth.write_dataset(gallery, n, seed=7)
    encoder = load_model("tiny")
    update, close = reporter("indexing")
    with Collection.open(coll_dir, create=True) as coll:
        report = Indexer(coll, encoder, progress=update).run([gallery / "images"])
        close()
        click.echo(f"collection {coll_dir}: {report.summary()}")
        pairs = [line.split("\t", 1) for line in (gallery / "captions.txt").read_text("utf-8").splitlines()]
        rng = random.Random(0)
        for name, caption in rng.sample(pairs, min(queries, len(pairs))):
            result = coll.search(encoder.embed_texts([caption])[0], field=encoder.spec.field_name, hits=3)
            click.echo(f'\nclipseek search "{caption}"')
            for i, hit in enumerate(result.hits):
                own = hit.fields.get("image_file_name") == name
                mark = "  <- the image this caption was written for" if own else ""
                click.echo(f"{i + 1:>4}  {hit.relevance:.4f}  {hit.fields.get('path')}{mark}")
    click.echo(f"\nsearch it yourself:  clipseek search \"a red circle on the left of a white background\" "
               f"--collection {coll_dir}")
