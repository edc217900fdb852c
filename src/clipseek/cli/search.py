"""``clipseek index`` and ``clipseek search``: the main job, over a collection folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import paths
from ..collection import Collection
from ..models import DEFAULT_MODEL, load_model
from ..models.fields import field_for
from .options import runtime_options

if TYPE_CHECKING:
    from ..indexer import Indexer
    from ..watch import FolderWatcher

collection_option = click.option(
    "--collection", "collection_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    envvar="CLIPSEEK_COLLECTION", show_envvar=True,
    help="Collection folder [default: $CLIPSEEK_HOME/collection, i.e. ~/.local/share/clipseek/collection].")


def collection_path(value: Path | None) -> Path:
    return value or paths.default_collection()


@click.command("index")
@click.argument("paths_", metavar="PATH...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@collection_option
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model to embed with (see `clipseek models`).")
@click.option("--batch-size", default=32, show_default=True, help="Images per inference batch.")
@click.option("--workers", default=None, type=int, help="Decoding threads [default: number of CPUs].")
@click.option("--threads", default=None, type=int, help="Inference threads [default: number of CPUs].")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave out files and folders whose name or path under PATH matches (repeatable): "
                   "--exclude node_modules --exclude '*.tmp' --exclude 'Archive/2019/*'. Hidden ones always are.")
@click.option("--watch", is_flag=True, help="After indexing, keep following PATH... as files appear, change, "
                                            "move or disappear (Ctrl-C to stop).")
@click.option("--poll", is_flag=True, help="With --watch: scan every 2 s instead of using file events "
                                           "(chosen by itself on network file systems or when events fail).")
@click.option("--settle", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="With --watch: seconds a file must stay unchanged before it is indexed (not half-copied).")
@runtime_options
def index_command(paths_: tuple[Path, ...], collection_dir: Path | None, model: str, batch_size: int,
                  workers: int | None, threads: int | None, exclude: tuple[str, ...], watch: bool, poll: bool,
                  settle: float, backend: str, precision: str, device: str) -> None:
    """Index the images under PATH... (recursively) into the collection.

    \b
    Re-running is cheap: unchanged files are skipped, renamed or copied files
    reuse their vectors, deleted files leave the collection. Run again with
    --model OTHER to add another model's vectors to the same images.
    With --watch it keeps running and indexes changes as they happen: a new
    photo is searchable within seconds of being written completely.
    Formats: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF and camera RAW
    (CR2, CR3, NEF, ARW, DNG, ORF, RW2, RAF, ...: the embedded preview, or a
    half-size decode). A RAW file beside a JPEG of the same name is indexed
    once, as the JPEG.

    \b
      clipseek index ~/Pictures --exclude '*/Thumbnails' --watch
    """
    from ..indexer import Indexer
    from .progress import list_failures, list_metadata, reporter

    encoder = load_model(model, threads=threads, backend=backend, precision=precision, device=device,
                         batch_size=batch_size)
    click.echo(f"{encoder.name} on {encoder.describe()}", err=True)
    update, close = reporter("indexing")
    with Collection.open(collection_path(collection_dir), create=True) as coll:
        indexer = Indexer(coll, encoder, workers=workers, batch_size=batch_size, progress=update, exclude=exclude)
        watcher = None
        if watch:
            from ..watch import FolderWatcher

            watcher = FolderWatcher(paths_, lambda changed: None, exclude=exclude, settle=settle, poll=poll,
                                    say=lambda m: click.echo(m, err=True))
            watcher.start()  # before the first pass: what is written meanwhile is not missed
        report = indexer.run(paths_)
        close()
        click.echo(report.summary())
        list_failures(report.failed, f"in {coll.path / 'index-failures.log'}")
        list_metadata(report.metadata_skipped)
        if watcher is not None and not report.interrupted:
            _follow(watcher, indexer, paths_)
    if report.interrupted:
        sys.exit(130)
    if report.indexed + report.unchanged + report.reused == 0 and report.failed and not watch:
        sys.exit(1)


def _follow(watcher: "FolderWatcher", indexer: "Indexer", roots: tuple[Path, ...]) -> None:
    """Index each batch of settled changes until Ctrl-C; one line per batch that changed something."""
    import time

    from .progress import list_failures, list_metadata

    indexer.progress = lambda done, total: None

    def on_batch(changed: list[Path]) -> None:
        gone_roots = [r for r in roots if Path(os.path.abspath(r)) in changed and not r.exists()]
        report = indexer.update(changed)
        if report.indexed or report.reused or report.removed or report.failed:
            click.echo(f"{time.strftime('%H:%M:%S')} {report.summary()}")
            list_failures(report.failed, "")
            list_metadata(report.metadata_skipped)
        for root in gone_roots:
            click.echo(f"{root} was deleted: its images left the collection; still watching the rest", err=True)

    watcher.on_batch = on_batch
    click.echo(f"watching {', '.join(str(r) for r in roots)} for changes (Ctrl-C to stop)", err=True)
    try:
        watcher.run()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop.set()


def pick_field(coll: Collection, model: str | None) -> tuple[str, str]:
    """(field, the model that encodes the query): :func:`clipseek.models.fields.field_for`'s decision."""
    choice = field_for(coll.fields, model)
    return choice.field.name, choice.encoder


def hyperlink(path: str) -> str:
    if not sys.stdout.isatty() or not path.startswith("/"):
        return path
    return f"\033]8;;file://{path}\033\\{path}\033]8;;\033\\"


@click.command("search")
@click.argument("text", required=False)
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Search by an image instead (image → image).")
@click.option("--not", "negatives", multiple=True, metavar="TEXT",
              help="Push results away from TEXT (repeatable): the query becomes query − 0.5·TEXT, as on the page.")
@click.option("--in", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only images under this folder.")
@click.option("--format", "formats", default=None, metavar="JPEG,PNG,...", help="Only these image formats.")
@click.option("--since", type=str, default=None, metavar="DATE",
              help="Only photos taken on or after DATE (2024-06-01, or 2024-06-01T18:30): the EXIF date as the camera "
                   "showed it, else the file's time.")
@click.option("--until", type=str, default=None, metavar="DATE", help="Only photos taken on or before DATE.")
@click.option("--camera", default=None, metavar="TEXT",
              help="Only photos from cameras whose make and model contain TEXT (case-insensitive): --camera iphone.")
@click.option("--near", default=None, metavar="LAT,LON,KM", help="Only photos taken within KM of a place (EXIF GPS).")
@click.option("--sort", type=click.Choice(["relevance", "date"]), default="relevance", show_default=True,
              help="date: the relevant hits (--min-relevance; among the 400 most relevant), newest first.")
@click.option("--min-relevance", type=float, default=None, metavar="R",
              help="Leave out hits whose relevance is below R. Relevance is Vespa's closeness for angular "
                   "distance, 1/(1 + angle in radians): 1 for the same direction, 0.5 at cosine 0.54. It is "
                   "compared as --json prints it (6 decimals): a relevance copied from the output keeps its hit.")
@click.option("-k", "--hits", "k", default=10, show_default=True, help="Number of results.")
@click.option("--model", default=None, help="Model whose vectors to search [default: the collection's].")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (for scripts).")
@click.option("--collapse", is_flag=True, help="Show one photo of each group of near-duplicates (the best-ranked; "
                                               "as `clipseek duplicates` groups them).")
@click.option("--paths-only", is_flag=True, help="Print only the paths, one per line (for xargs and friends).")
@click.option("-0", "--null", "null", is_flag=True,
              help="With --paths-only: end each path with a NUL byte, not a newline, for xargs -0 (a file name may "
                   "hold a newline).")
@click.option("--open", "open_", is_flag=True, help="Open the best hit in the system's image viewer.")
@collection_option
@runtime_options
def search_command(text: str | None, image: Path | None, negatives: tuple[str, ...], folder: Path | None,
                   formats: str | None, since: str | None, until: str | None, camera: str | None,
                   near: str | None, sort: str, min_relevance: float | None, k: int, model: str | None, as_json: bool,
                   collapse: bool, paths_only: bool, null: bool, open_: bool, collection_dir: Path | None,
                   backend: str, precision: str, device: str) -> None:
    """Find the images that best match TEXT (or --image FILE).

    \b
      clipseek search "a dog running on a beach"
      clipseek search "a beach" --not people --not umbrellas --in ~/Pictures/2024
      clipseek search --image ~/Pictures/cat.jpg -k 5 --json
      clipseek search "receipts" --min-relevance 0.25 --paths-only -0 | xargs -0 ls -l
      clipseek search "birthday cake" --since 2023-01-01 --camera iphone --sort date --min-relevance 0.45
    """
    import numpy as np

    from ..collection import Filter
    from ..models import l2_normalize

    if (text is None) == (image is None):
        raise click.UsageError("give a TEXT to search for, or --image FILE (not both)")
    if as_json and paths_only:
        raise click.UsageError("--json and --paths-only are two output formats: choose one")
    if null and not paths_only:
        raise click.UsageError("-0/--null ends each path of --paths-only with a NUL byte: add --paths-only")
    wanted = Filter(folder=str(folder.expanduser().resolve()) if folder else None,
                    formats=[f.strip().upper() for f in formats.split(",") if f.strip()] if formats else None,
                    taken_from=_date(since, "--since", end=False), taken_to=_date(until, "--until", end=True),
                    near=_place(near) if near else None)
    with Collection.open(collection_path(collection_dir), readonly=True) as coll:
        if camera is not None:
            wanted.cameras = _cameras(coll, camera)
        field, model_name = pick_field(coll, model)
        encoder = load_model(model_name, backend=backend, precision=precision, device=device)
        vector = encoder.embed_texts([text])[0] if text is not None else encoder.embed_images([image or Path()])[0]
        if negatives:
            vector = l2_normalize(vector - 0.5 * encoder.embed_texts(list(negatives)).sum(axis=0)).astype(np.float32)
        fetch = 400 if sort == "date" else min(k * 3, 400) if collapse else k
        result = coll.search(vector, field=field, hits=fetch, model=encoder.image_ref, filter=wanted)
        hits = [h for h in result.hits if min_relevance is None or h.shown_relevance() >= min_relevance]
        if sort == "date":
            hits.sort(key=lambda h: -(h.fields.get("taken") or float("-inf")))
        if collapse:
            from ..duplicates import collapse as collapse_hits

            hits = collapse_hits(hits, coll)
        hits = hits[:k]
    if open_ and hits:
        click.launch(str(hits[0].fields.get("path", "")))
    if as_json:
        click.echo(json.dumps({"query": text or str(image), "not": list(negatives), "model": encoder.spec.name,
                               "field": field, "total": result.total_count, "hits": [
                                   {"rank": i + 1, "id": h.docid, "relevance": h.shown_relevance(),
                                    "path": h.fields.get("path")} for i, h in enumerate(hits)]}, indent=1))
        return
    if paths_only:
        for h in hits:
            click.echo(str(h.fields.get("path", h.docid)) + ("\0" if null else "\n"), nl=False)
        return
    if not hits:
        click.echo("no results")
        return
    click.echo(f"{'rank':>4}  {'relevance':>9}  path")
    for i, h in enumerate(hits):
        click.echo(f"{i + 1:>4}  {h.relevance:9.4f}  {hyperlink(str(h.fields.get('path', h.docid)))}")


def _date(text: str | None, option: str, *, end: bool) -> float | None:
    """A date or date-time as the camera's clock showed it (read as UTC, as clipseek.exif stores it)."""
    import datetime as dt

    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date: write 2024-06-01 or 2024-06-01T18:30",
                                 param_hint=option) from None
    if len(text.strip()) <= 10 and end:
        when += dt.timedelta(days=1, microseconds=-1)  # --until 2024-06-01 includes that whole day
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _place(text: str) -> tuple[float, float, float]:
    try:
        lat, lon, km = (float(p) for p in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: write LAT,LON,KM, e.g. 48.8566,2.3522,5", param_hint="--near") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and km >= 0):
        raise click.BadParameter(f"{text!r}: latitude -90..90, longitude -180..180, km >= 0", param_hint="--near")
    return lat, lon, km


def _cameras(coll: Collection, text: str) -> list[str]:
    """The collection's camera names that contain ``text`` (case-insensitive); an error listing them if none."""
    names = [str(name) for name, _count in coll.attribute_counts("camera")]
    found = [n for n in names if text.lower() in n.lower()]
    if not found:
        have = ", ".join(names[:20]) or "none (no photo with camera EXIF is indexed)"
        raise click.BadParameter(f"no camera in the collection matches {text!r}; cameras: {have}",
                                 param_hint="--camera")
    return found
