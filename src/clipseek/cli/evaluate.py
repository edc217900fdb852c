"""``clipseek eval``: compare models on a captioned image set (Flickr8k's layout, or `clipseek synth` output)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click
import numpy as np

from .. import paths
from ..models import DEFAULT_MODEL


@click.command("eval")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with images/ and captions.txt (or Flickr8k.token.txt) and optional split lists.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "dev", "train", "all"]))
@click.option("--model", "models", default=DEFAULT_MODEL, show_default=True,
              help="Comma-separated models to compare, e.g. ViT-B/32,RN50.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("clipseek-eval"),
              show_default=True, help="Where results.json, results.csv and results.png go.")
@click.option("--approximate", is_flag=True, help="Also measure the HNSW index's recall@10 against exact search.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the table.")
def eval_command(data_dir: Path, split: str, models: str, out: Path, approximate: bool, as_json: bool) -> None:
    """Text → image Recall@1/5/10, MRR@100, median/mean rank, image → text recall.

    \b
      clipseek eval --data ../shared/data/flickr8k --split test --model ViT-B/32,RN50
      clipseek synth /tmp/s --n 1000 && clipseek eval --data /tmp/s --model tiny

    Image vectors are cached in a collection per dataset, so a second run only
    encodes the captions. Queries dropped (missing images, duplicates, empty
    captions) are counted in the output.
    """
    from ..evaluate import ann_recall, embed_set, load_dataset, metrics, write_outputs
    from ..models import load_model
    from .progress import reporter

    data = load_dataset(data_dir, split)
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    cache = paths.home_dir() / "eval" / f"{data_dir.resolve().name}-{key}"
    results = []
    for name in [m.strip() for m in models.split(",") if m.strip()]:
        encoder = load_model(name)
        update, close = reporter(f"embedding {name}")
        image_vecs, names, failed = embed_set(data, encoder, cache, update)
        close()
        row = {n: i for i, n in enumerate(names)}
        queries = [(n, c) for n, c in data.queries if n in row]
        if len(queries) < len(data.queries):
            data.dropped[f"image could not be decoded ({name})"] += len(data.queries) - len(queries)
        text_vecs = encoder.embed_texts([c for _, c in queries])
        result = metrics(encoder.spec.name, text_vecs, image_vecs, np.asarray([row[n] for n, _ in queries]))
        if approximate:
            result.ann_recall_vs_exact = ann_recall(cache, encoder.spec.field_name, text_vecs[:1000])
        results.append(result)
    files = write_outputs(out, data, results)
    if as_json:
        click.echo((out / "results.json").read_text(encoding="utf-8"))
        return
    click.echo(f"{data_dir.name}, split {split}: {len(data.images)} images, {len(data.queries)} captions")
    for reason, count in sorted(data.dropped.items()):
        click.echo(f"  dropped {count}: {reason}")
    click.echo(f"{'model':<28} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@100':>8} {'med':>5} {'mean':>7}  "
               f"{'i2t R@1':>7} {'R@5':>6} {'R@10':>6}" + ("  ANN@10" if approximate else ""))
    for m in results:
        click.echo(f"{m.model:<28} {m.recall['R@1']:6.3f} {m.recall['R@5']:6.3f} {m.recall['R@10']:6.3f} "
                   f"{m.mrr_at_100:8.3f} {m.median_rank:5.0f} {m.mean_rank:7.1f}  "
                   f"{m.image_to_text_recall['R@1']:7.3f} {m.image_to_text_recall['R@5']:6.3f} "
                   f"{m.image_to_text_recall['R@10']:6.3f}"
                   + (f"  {m.ann_recall_vs_exact:.3f}" if m.ann_recall_vs_exact is not None else ""))
    click.echo("wrote " + ", ".join(str(f) for f in files))
