"""CLIP encoders: the registry of variants, loading (hub → cache → ONNX) and inference (ONNX Runtime or OpenVINO)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .encoder import (
    TOWERS,
    Encoder,
    ImageBatch,
    OnnxEncoder,
    OpenVinoEncoder,
    l2_normalize,
    open_encoder,
)
from .loader import fetch_model, resolve
from .registry import DEFAULT_MODEL, available_models, get_spec
from .runtime import Backend, Precision, Runtime, choose
from .spec import ModelSpec, parse_ref

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "DEFAULT_MODEL", "Backend", "Encoder", "ImageBatch", "ModelSpec", "OnnxEncoder", "OpenVinoEncoder", "Precision",
    "Runtime", "available_models", "choose", "fetch_model", "get_spec", "l2_normalize", "load_model", "open_encoder",
    "TOWERS", "parse_ref", "resolve",
]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    threads: int | None = None,
    precision: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
    cache: Path | None = None,
    fetch: bool = True,
) -> OnnxEncoder:
    """An encoder for ``name`` (registry name, alias, slug or ``local-dir:PATH``), fetched on first use.

    ``backend``, ``precision`` and ``device`` left as None (or "auto") are chosen by
    :func:`clipseek.models.runtime.choose` from the environment, what is installed, the CPU and the model's
    ``clipseek models check`` record."""
    from .check import read_record

    folder = resolve(name, cache=cache, fetch=fetch)
    measured = read_record(folder)
    runtimes = {t: choose(backend, precision, device, measured=measured, tower=t) for t in TOWERS}
    encoder = open_encoder(folder, runtime=runtimes, threads=threads, batch_size=batch_size)
    ref = parse_ref(name)
    if ref.folder is not None:
        encoder._ref = ref.canonical
    return encoder
