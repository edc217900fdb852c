"""The model registry: CLIP variants as data (``specs/*.json``), looked up by name, alias or slug.

A spec says everything the rest of clipseek needs to know about a model without loading it: the
architecture, embedding size, preprocessing (image size, mean/std, interpolation), context length, where the
weights come from and their checksum, and the ``slug`` that names its vector field (``<slug>_image``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ..errors import UnknownModelError
from .modeldir import read_model_dir_spec
from .spec import LOCAL_DIR_PREFIX, ModelRef, ModelSpec, parse_ref

__all__ = ["DEFAULT_MODEL", "LOCAL_DIR_PREFIX", "ModelRef", "ModelSpec", "available_models", "get_spec", "parse_ref"]

DEFAULT_MODEL = "ViT-B/32"


@lru_cache(maxsize=1)
def _builtin_specs() -> tuple[ModelSpec, ...]:
    specs: list[ModelSpec] = []
    folder = resources.files("clipseek.models").joinpath("specs")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            doc = json.loads(entry.read_text(encoding="utf-8"))
            specs.extend(ModelSpec.from_dict(m) for m in doc["models"])
    return tuple(specs)


def available_models() -> list[ModelSpec]:
    """Every registered model, real ones first in registry order, test models last."""
    specs = _builtin_specs()
    return [s for s in specs if s.kind != "test"] + [s for s in specs if s.kind == "test"]


def _norm(name: str) -> str:
    return name.strip().lower()


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name, alias or slug (case-insensitive); ``local-dir:`` reads the folder's spec."""
    ref = parse_ref(name)
    if ref.folder is not None:
        return read_model_dir_spec(ref.folder)
    wanted = _norm(name)
    for spec in _builtin_specs():
        if wanted in {_norm(spec.name), _norm(spec.slug), *(_norm(a) for a in spec.aliases)}:
            return spec
    raise UnknownModelError(name, [s.name for s in available_models()])
