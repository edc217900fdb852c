"""``clipseek models``: list the registry, fetch and export a model."""

from __future__ import annotations

from pathlib import Path

import click

from ..models import available_models, fetch_model, get_spec, modeldir
from ..models.loader import model_cache_dir
from ..models.registry import DEFAULT_MODEL


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the CLIP models clipseek knows (and which are already fetched).

    \b
    Names are case-insensitive; aliases and field slugs work too:
      clipseek index ~/Pictures --model RN50
      clipseek models fetch ViT-B/16
    """
    if ctx.invoked_subcommand is not None:
        return
    specs = available_models()
    if as_json:
        import json

        click.echo(json.dumps([s.to_dict() for s in specs], indent=1))
        return
    click.echo(f"{'name':<32} {'slug':<20} {'dim':>5} {'size':>5}  {'kind':<5} status")
    for spec in specs:
        fetched = spec.bundled_dir is not None or modeldir.is_complete(model_cache_dir(spec))
        status = "bundled" if spec.bundled_dir else ("fetched" if fetched else "-")
        mark = " (default)" if spec.name == DEFAULT_MODEL else ""
        kind = "test" if spec.kind == "test" else "photo"
        click.echo(f"{spec.name + mark:<32} {spec.slug:<20} {spec.embed_dim:>5} {spec.image_size:>5}  {kind:<5} "
                   f"{status}")


@models.command("fetch")
@click.argument("name", default=DEFAULT_MODEL)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Build from this already-downloaded open_clip_model.safetensors instead of downloading.")
@click.option("--to", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the model folder here instead of the cache (copy it anywhere; use it as local-dir:DIR).")
@click.option("--exporter", type=click.Choice(["auto", "builder", "torch"]), default="auto", show_default=True,
              help="builder: numpy + onnx, no torch; torch: open_clip's model through torch.onnx (needs "
                   "clipseek[export]); auto: the builder, torch for a model the builder does not implement.")
@click.option("--skip-check", is_flag=True, help="Do not run `clipseek models check` after building.")
def fetch(name: str, weights: Path | None, out: Path | None, exporter: str, skip_check: bool) -> None:
    """Download NAME's weights, build its two ONNX towers, check them and cache them.

    \b
    The weights are the model's open_clip_model.safetensors on the Hugging Face
    hub (resumed if a download stopped; kept only if its SHA-256 is the one the
    hub publishes). The towers are built with numpy and onnx: no torch needed.
    Then the towers run on fixed inputs, and `clipseek models check` measures
    which backend and precision to use here.

    \b
      clipseek models fetch ViT-B/32
      clipseek models fetch RN50 --weights ~/Downloads/open_clip_model.safetensors
      clipseek models fetch ViT-L/14 --to /media/usb/vit_l_14   # then local-dir:/media/usb/vit_l_14

    Without network, fetch on another machine and copy the cache folder (or
    the --to folder) here. HF_ENDPOINT picks a hub mirror; HF_TOKEN is sent if set.
    """
    spec = get_spec(name)
    def say(msg: str) -> None:
        click.echo(msg, err=True)

    folder = fetch_model(spec, progress=say, weights=weights, exporter=exporter, out=out)
    if not skip_check:
        _check(folder, threads=None, as_json=False)
    click.echo(str(folder))


@models.command("check")
@click.argument("name", default=DEFAULT_MODEL)
@click.option("--threads", default=None, type=int, help="Inference threads [default: number of CPUs].")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def check(name: str, threads: int | None, as_json: bool) -> None:
    """Measure how each backend and precision agrees with fp32 on NAME, and how fast each runs here.

    \b
    The reference is ONNX Runtime fp32, the towers as exported. Each other
    variant this machine can run (OpenVINO fp32, OpenVINO bf16 where the CPU
    has AVX512_BF16 or AMX, ONNX Runtime int8) embeds a calibration set of
    128 rendered scenes and 256 captions. A tower passes when every vector
    it makes has cosine >= 0.9995 to fp32's and text->image search keeps
    >= 90% of fp32's top 10 on average.

    \b
    Each tower is judged and timed on its own. With --precision auto (the
    default everywhere), clipseek then runs each tower on the fastest
    variant that passed for it; a less exact variant must be 10% faster.
    Without a check it uses bf16 where the CPU has it and fp32 otherwise,
    and never int8. `clipseek models fetch` runs
    this check. The record lives under $CLIPSEEK_CACHE/checks.
    """
    from ..models import resolve

    _check(resolve(name), threads=threads, as_json=as_json)


def _check(folder: Path, *, threads: int | None, as_json: bool) -> None:
    import json

    from ..models.check import check_model
    from ..models.runtime import choose

    doc = check_model(folder, threads=threads, say=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)))
    chosen = {t: choose(measured=doc, tower=t) for t in ("image", "text")}
    doc["default"] = {t: {"backend": r.backend, "precision": r.precision, "reason": r.reason}
                      for t, r in chosen.items()}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    mark = {True: "ok", False: "FAIL"}
    click.echo(f"{'backend':<12} {'precision':<9} | {'img/s':>7} {'min cos':>8} {'top-10':>6} {'':4} | "
               f"{'query ms':>8} {'min cos':>8} {'top-10':>6}")
    for row in doc["variants"]:
        click.echo(f"{row['backend']:<12} {row['precision']:<9} | {row['images_per_s']:>7.1f} "
                   f"{row['min_cos_image']:>8.5f} {row['top10_overlap_image']:>6.3f} {mark[row['image_passed']]:<4} | "
                   f"{row['text_ms']:>8.2f} {row['min_cos_text']:>8.5f} {row['top10_overlap_text']:>6.3f} "
                   f"{mark[row['text_passed']]}")
    click.echo(f"default from now on: images on {chosen['image']}, text on {chosen['text']}")


@models.command("info")
@click.argument("name", default=DEFAULT_MODEL)
def info(name: str) -> None:
    """Show one model's spec: architecture, preprocessing, weights source."""
    import json

    spec = get_spec(name)
    data = spec.to_dict()
    data["field"] = spec.field_name
    data["cache_dir"] = str(model_cache_dir(spec))
    click.echo(json.dumps(data, indent=1))

