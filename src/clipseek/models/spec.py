"""What a model is, as data: :class:`ModelSpec` (architecture, sizes, weights, names), its
:class:`PreprocessConfig` (as open_clip keeps its preprocessing config apart from the model config), and
:func:`parse_ref`, the one reader of the model references users type (``ViT-B/32``, an alias or slug, or
``local-dir:PATH``). A leaf module: it imports nothing else of clipseek's models package, so the registry and the
model folder code both build on it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..schema import ModelNames

LOCAL_DIR_PREFIX = "local-dir:"
#: How an image is brought to the model's square input: only open_clip's default (resize the shortest side,
#: centre-crop) is implemented (clipseek.transforms); a spec asking for another is refused when read.
RESIZE_MODES = ("shortest",)


@dataclass(frozen=True)
class ModelRef:
    """A model reference as a user typed it, parsed: a registry name (or alias, or slug), or a folder."""

    text: str
    folder: Path | None = None  # for local-dir:PATH, the folder (user-expanded, not resolved)

    @property
    def canonical(self) -> str:
        """How the reference is recorded: ``local-dir:`` with the folder's absolute path, or the text itself."""
        return f"{LOCAL_DIR_PREFIX}{self.folder.resolve()}" if self.folder is not None else self.text


def parse_ref(text: str) -> ModelRef:
    """``local-dir:PATH`` → a folder reference; anything else names a registry model."""
    if text.startswith(LOCAL_DIR_PREFIX):
        return ModelRef(text, Path(text[len(LOCAL_DIR_PREFIX):]).expanduser())
    return ModelRef(text)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the image tower's input (open_clip's ``PreprocessCfg``)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


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

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ModelError(f"model {self.name}: resize_mode {self.resize_mode!r} is not supported (clipseek "
                             f"reproduces open_clip's {', '.join(RESIZE_MODES)} eval transform): export the model "
                             "with resize_mode 'shortest'")

    @property
    def names(self) -> ModelNames:
        """The names this model's field, query tensor and rank profile have (``<slug>_image``, ...)."""
        return ModelNames(self.slug)

    @property
    def field_name(self) -> str:
        return self.names.image_field

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(self.image_size, self.mean, self.std, self.interpolation, self.resize_mode)

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
