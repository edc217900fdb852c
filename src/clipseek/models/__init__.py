"""CLIP encoders: the registry of variants, loading (hub → cache → ONNX) and ONNX Runtime inference."""

from __future__ import annotations

from pathlib import Path

from .encoder import Encoder, ImageBatch, OnnxEncoder, Precision, l2_normalize
from .loader import fetch_model, resolve
from .registry import DEFAULT_MODEL, ModelSpec, available_models, get_spec

__all__ = [
    "DEFAULT_MODEL", "Encoder", "ImageBatch", "ModelSpec", "OnnxEncoder", "Precision", "available_models",
    "fetch_model", "get_spec", "l2_normalize", "load_model", "resolve",
]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    threads: int | None = None,
    precision: Precision = "fp32",
    batch_size: int = 32,
    cache: Path | None = None,
    fetch: bool = True,
) -> OnnxEncoder:
    """An encoder for ``name`` (registry name, alias, slug or ``local-dir:PATH``), fetched on first use."""
    folder = resolve(name, cache=cache, fetch=fetch)
    encoder = OnnxEncoder(folder, threads=threads, precision=precision, batch_size=batch_size)
    if name.startswith("local-dir:"):
        encoder._ref = f"local-dir:{folder.resolve()}"
    return encoder
