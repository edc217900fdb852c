"""The model registry: CLIP variants as data (``specs/*.json``), looked up by name, alias or slug.

A spec says everything the rest of clipseek needs to know about a model without loading it: the
architecture, embedding size, preprocessing (image size, mean/std, interpolation), context length, where the
weights come from and their checksum, and the ``slug`` that names its vector field (``<slug>_image``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError

DEFAULT_MODEL = "ViT-B/32"
LOCAL_DIR_PREFIX = "local-dir:"


@dataclass(frozen=True)
class ModelSpec:
    """One CLIP variant. ``kind`` is ``photo`` for real models and ``test`` for the bundled tiny one."""

    name: str
    slug: str
    arch: str
    pretrained: str
    embed_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    context_length: int = 77
    text_causal: bool = True
    quick_gelu: bool = False
    weights: dict[str, Any] = field(default_factory=dict)
    kind: str = "photo"
    description: str = ""
    aliases: tuple[str, ...] = ()
    bundled_dir: str | None = None
    # A text-only fine-tune: the model whose image vectors this model's text vectors are trained against. Its
    # image tower is that model's, byte for byte, so it searches (and indexes into) that model's field.
    image_model: str | None = None
    # The architecture as open_clip's model config writes it (``embed_dim``, ``vision_cfg``, ``text_cfg``): what
    # the ONNX builder (models/build.py) builds from, so it never guesses a model from its tensor shapes.
    tower_config: dict[str, Any] = field(default_factory=dict)

    @property
    def field_name(self) -> str:
        return f"{self.slug}_image"

    @property
    def image_vectors_of(self) -> str:
        """The model name a collection records for this model's image vectors."""
        return self.image_model or self.name

    @property
    def weights_source(self) -> str:
        if self.bundled_dir:
            return "bundled with clipseek"
        if "url" in self.weights:
            return str(self.weights["url"])
        if "hf_hub" in self.weights:
            return f"hf-hub:{self.weights['hf_hub']}"
        return "local"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        for key in ("mean", "std", "aliases"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("mean", "std", "aliases"):
            out[key] = list(out[key])
        return out


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
    if name.startswith(LOCAL_DIR_PREFIX):
        return spec_from_dir(Path(name[len(LOCAL_DIR_PREFIX):]).expanduser())
    wanted = _norm(name)
    for spec in _builtin_specs():
        if wanted in {_norm(spec.name), _norm(spec.slug), *(_norm(a) for a in spec.aliases)}:
            return spec
    raise UnknownModelError(name, [s.name for s in available_models()])


def spec_from_dir(folder: Path) -> ModelSpec:
    """The spec written beside an exported model (``clipseek.json``)."""
    from .modeldir import read_model_dir_spec

    return read_model_dir_spec(folder)
