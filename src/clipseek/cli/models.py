"""``clipseek models``: list the registry, fetch and export a model."""

from __future__ import annotations

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
        click.echo(f"{spec.name + mark:<32} {spec.slug:<20} {spec.embed_dim:>5} {spec.image_size:>5}  {kind:<5} {status}")


@models.command("fetch")
@click.argument("name", default=DEFAULT_MODEL)
def fetch(name: str) -> None:
    """Download NAME's weights, check them, export both towers to ONNX and cache them.

    Needs network access and the export extra: pip install 'clipseek[export]'.
    Copy the resulting folder to an offline machine and use it as local-dir:PATH,
    or point CLIPSEEK_CACHE at a copy of the cache.
    """
    spec = get_spec(name)
    folder = fetch_model(spec, progress=lambda msg: click.echo(msg, err=True))
    click.echo(str(folder))


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

