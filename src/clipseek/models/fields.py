"""Which vector field a search by model uses: the one decision the CLI, the native API and the page share.

A collection has one field per model (``<slug>_image``). A model asked for by name, alias, slug, field name or
``local-dir:`` reference searches the field holding that model's image vectors — for a text-only fine-tune, its
base model's, while its own text tower encodes the query. With no model asked for: the default model's field,
else the first by name. Anything else is a :class:`~clipseek.errors.NoVectorsError` saying what to index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..errors import NoVectorsError, UnknownModelError
from ..schema import ModelNames
from ..vectors import FieldInfo
from .registry import DEFAULT_MODEL, get_spec
from .spec import parse_ref


@dataclass(frozen=True)
class FieldChoice:
    field: FieldInfo  # the vector field to search
    encoder: str  # the model whose text tower encodes the query (a fine-tune's own, not its base's)


def field_for(fields: Mapping[str, FieldInfo], model: str | None, *, default: str = DEFAULT_MODEL) -> FieldChoice:
    """The field a search with ``model`` (None: the default) uses in a collection with these ``fields``."""
    if not fields:
        raise NoVectorsError("the collection has no images yet: run `clipseek index PATH` first")
    infos = sorted(fields.values(), key=lambda f: f.name)
    if not model:
        chosen = next((f for f in infos if f.model == default), infos[0])
        return FieldChoice(chosen, chosen.model)
    for info in infos:  # the collection's own names: the recorded model, the field, its slug
        names = ModelNames.of_field(info.name)
        if model == info.model:
            return FieldChoice(info, model)
        if model == info.name or (names is not None and model == names.slug):
            return FieldChoice(info, info.model)
    ref = parse_ref(model)
    try:
        spec = get_spec(model)
    except UnknownModelError:  # not a registry model (a local-dir: folder that is not a model is an error)
        spec = None
    wanted = model if spec is None else spec.image_model or (ref.canonical if ref.folder is not None else spec.name)
    for info in infos:
        if info.model == wanted:
            return FieldChoice(info, model)
    have = ", ".join(f.model for f in infos)
    raise NoVectorsError(f"the collection has no vectors of model {wanted} (it has: {have}); "
                         f"run `clipseek index PATH --model {model}` first")
