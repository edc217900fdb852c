"""``clipseek synth`` and ``clipseek train-tiny``: the offline data set and the model trained on it."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", default=1000, show_default=True, help="Number of images.")
@click.option("--seed", default=0, show_default=True, help="Random seed (a different seed, a different set).")
@click.option("--variant", type=click.Choice(["original", "shifted"]), default="original", show_default=True,
              help="shifted: the same scenes in another domain (gradient backgrounds, outlines, noise, JPEG "
                   "artefacts; captions with synonyms the tiny model never saw) — for measuring fine-tuning.")
def synth_command(out: Path, n: int, seed: int, variant: str) -> None:
    """Write a captioned synthetic image set to OUT (Flickr8k's layout).

    \b
    OUT/images/*          coloured shapes on backgrounds (PNG; JPEG when shifted)
    OUT/captions.txt      image<TAB>caption, five phrasings per image

    Every caption names all of its image's attributes, and no two images share
    them, so each caption has exactly one relevant image.

    \b
      clipseek synth shifted --variant shifted --n 3000 --seed 5
      clipseek finetune shifted --model tiny --out tuned
    """
    from .. import synth

    if n < 1 or n > len(synth.all_scenes()):
        raise click.BadParameter(f"must be between 1 and {len(synth.all_scenes())}", param_hint="--n")
    with tqdm(total=n, unit="img", desc="synth", disable=None) as bar:
        synth.write_dataset(out, n, seed, progress=lambda i: bar.update(i - bar.n), variant=variant)
    click.echo(f"wrote {n} images and {n * synth.CAPTIONS_PER_IMAGE} captions to {out}")


@click.command("train-tiny")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", default=None, type=int, help="Training steps (default: what shipped).")
@click.option("--seed", default=0, show_default=True)
def train_tiny_command(out: Path, steps: int | None, seed: int) -> None:
    """Train the tiny CLIP on synth scenes and export it to OUT (needs clipseek[export]).

    `make tiny-model` runs this with the shipped settings into the package.
    """
    from ..train import TrainConfig, train_tiny

    config = TrainConfig(seed=seed) if steps is None else TrainConfig(seed=seed, steps=steps)
    train_tiny(out, config, log=lambda msg: click.echo(msg, err=True))
