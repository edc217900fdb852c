"""``clipseek finetune``: adapt a CLIP model to your own (image, caption) pairs."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _alpha(value: str) -> float | None:
    if value.strip().lower() == "auto":
        return None
    try:
        alpha = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number between 0 and 1") from None
    if not 0 <= alpha <= 1:
        raise click.BadParameter(f"{alpha} is not between 0 and 1")
    return alpha


@click.command("finetune")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "base", default="ViT-B/32", show_default=True,
              help="The model to start from: a registry name (see `clipseek models`), tiny, or local-dir:DIR.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the tuned model to (refused if it exists, unless --force).")
@click.option("--mode", type=click.Choice(["text", "full"]), default="text", show_default=True,
              help="text: train the text tower only; your collection needs no re-index. "
                   "full: both towers (meant for a GPU); re-index with the tuned model.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (AdamW, linear warm-up, cosine decay).")
@click.option("--wise-alpha", default="auto", show_default=True,
              help="Weight of the tuned weights in (1-α)·base + α·tuned (WiSE-FT). auto: the smallest α within "
                   "0.01 of the best mean recall on the dev split. 0 gives back the base model.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same data: the same model.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's record (the manifest's) as JSON.")
def finetune_command(data: Path, base: str, out: Path, mode: str, epochs: int, batch_size: int, lr: float,
                     wise_alpha: str, seed: int, device: str, force: bool, as_json: bool) -> None:
    """Fine-tune a CLIP model on your own captioned images (needs clipseek[export]).

    DATA is a folder in Flickr8k's layout (images/ and captions.txt with
    image<TAB>caption lines, optional *trainImages.txt / *devImages.txt /
    *testImages.txt lists) or a TSV file of path<TAB>caption lines. Without
    split lists, about 10 % of the images are held out for dev and 10 % for
    test (by image, the same on every machine).

    \b
      clipseek synth shifted --variant shifted --n 3000 --seed 5
      clipseek finetune shifted --model tiny --out tuned
      clipseek eval --data other-set --model tiny,local-dir:tuned

    In text mode (the default) the image tower stays the base model's, byte
    for byte: a collection indexed with the base is searched with the tuned
    model as it is — `clipseek search "…" --model local-dir:tuned`, or
    `clipseek serve --model local-dir:tuned`.

    A checkpoint is written each epoch into OUT.partial; after Ctrl-C, a
    crash or a full disk, run the same command again to continue.
    """
    from ..finetune import FinetuneConfig, finetune

    config = FinetuneConfig(mode=mode, epochs=epochs, batch_size=batch_size, lr=lr, wise_alpha=_alpha(wise_alpha),
                            seed=seed, device=device)
    try:
        result = finetune(data, base, out, config, force=force, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: the last finished epoch is checkpointed in {out}.partial; run the same command "
                   "again to continue", err=True)
        raise SystemExit(130) from None
    if as_json:
        from ..models import modeldir

        click.echo(json.dumps(modeldir.read_manifest(out)["finetune"], indent=1))
        return
    for reason, count in sorted(result.dropped.items()):
        click.echo(f"  dropped {count}: {reason}")
    for path, reason in result.failed_images[:10]:
        click.echo(f"  unreadable image {path}: {reason}")
    click.echo(f"{'test split':<12} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@100':>8}")
    for label, m in (("before", result.before), ("after", result.after)):
        click.echo(f"{label:<12} {m['R@1']:6.3f} {m['R@5']:6.3f} {m['R@10']:6.3f} {m['MRR@100']:8.3f}")
    click.echo(f"WiSE-FT alpha {result.alpha}; export parity cos {result.parity_cos:.6f}")
    click.echo(f"wrote {out}: use it as --model local-dir:{out}" +
               (" (it searches the base model's vectors: no re-index)" if mode == "text" else
                f" and re-index: clipseek index PATH --model local-dir:{out}"))
