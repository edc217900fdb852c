"""Encoders: text and images → L2-normalised float32 vectors in one space.

:class:`Encoder` does the batching, tokenizing, decoding and normalising; a subclass implements two
methods on model inputs (:meth:`Encoder._encode_tokens`, :meth:`Encoder._encode_pixels`).
:class:`OnnxEncoder` runs the exported towers in ONNX Runtime, :class:`OpenVinoEncoder` in OpenVINO; which one
(and at which precision) :func:`open_encoder` decides with :mod:`clipseek.models.runtime`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError, ModelError
from ..tokenizer import get_tokenizer
from ..transforms import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    ImageInput,
    open_image,
    preprocess,
)
from . import modeldir
from .runtime import Precision, Runtime, choose
from .spec import ModelSpec


@dataclass
class ImageBatch:
    """Vectors for the images that could be used, and why the others could not."""

    vectors: np.ndarray
    ok: list[int] = field(default_factory=list)
    failed: list[tuple[int, ImageError]] = field(default_factory=list)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class Encoder(ABC):
    """Base class: batches inputs and returns L2-normalised ``float32`` arrays ``[n, dim]``."""

    folder: Path  # the exported model folder the towers come from

    def __init__(self, spec: ModelSpec, *, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: bool = True) -> None:
        self.spec = spec
        self._ref: str | None = None
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.draft = draft
        self.tokenizer = get_tokenizer(spec.context_length)

    @property
    def dim(self) -> int:
        return self.spec.embed_dim

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ref(self) -> str:
        """How to load this model again: the registry name, or ``local-dir:PATH`` for an unregistered export."""
        return self._ref or self.spec.name

    @property
    def image_ref(self) -> str:
        """The model a collection records for this encoder's image vectors: :attr:`ref`, except for a
        text-only fine-tune, whose image tower (and so every image vector) is its base model's."""
        return self.spec.image_model or self.ref

    @abstractmethod
    def _encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids ``[n, seq]`` (int64) → unnormalised embeddings ``[n, dim]``."""

    @abstractmethod
    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed images ``[n, 3, size, size]`` (float32) → unnormalised embeddings ``[n, dim]``."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings; wrap a single text in a list")
        out = [self.embed_tokens(self.tokenizer(list(texts[i : i + self.batch_size])))
               for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Embed token ids; a causal text tower runs only up to the longest end-of-text (exact)."""
        if self.spec.text_causal and tokens.size:
            tokens = tokens[:, : int(self.tokenizer.lengths(tokens).max())]
        return l2_normalize(self._encode_tokens(np.ascontiguousarray(tokens, dtype=np.int64)))

    def load(self, image: ImageInput | BinaryIO, name: str | None = None) -> tuple[Image.Image, ImageInfo]:
        """Decode for this model (JPEG draft down to what it needs); raises ImageError naming the file."""
        draft = self.spec.image_size if self.draft else None
        return open_image(image, max_pixels=self.max_pixels, draft_size=draft, name=name)

    def preprocess_image(self, img: Image.Image) -> np.ndarray:
        spec = self.spec
        return preprocess(img, spec.image_size, spec.mean, spec.std, spec.interpolation)

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """Decode (if a path) and preprocess one image to ``[3, size, size]``; raises ImageError."""
        return self.preprocess_image(self.load(image)[0])

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = [self._encode_pixels(np.ascontiguousarray(pixels[i : i + self.batch_size], dtype=np.float32))
               for i in range(0, len(pixels), self.batch_size)]
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def try_embed_images(self, images: Sequence[ImageInput]) -> ImageBatch:
        """Embed what can be embedded; bad files are reported in ``failed``, never lost silently."""
        arrays: list[np.ndarray] = []
        batch = ImageBatch(np.zeros((0, self.dim), np.float32))
        for i, image in enumerate(images):
            try:
                arrays.append(self.preprocess(image))
                batch.ok.append(i)
            except ImageError as exc:
                batch.failed.append((i, exc))
        if arrays:
            batch.vectors = self.embed_pixels(np.stack(arrays))
        return batch

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Embed every image or raise the first :class:`ImageError` (use :meth:`try_embed_images` to go on)."""
        batch = self.try_embed_images(images)
        if batch.failed:
            raise batch.failed[0][1]
        return batch.vectors


def default_threads() -> int:
    env = os.environ.get("CLIPSEEK_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


TOWERS = ("text", "image")


class OnnxEncoder(Encoder):
    """Both exported towers (``text.onnx``, ``image.onnx``), each run on its own :class:`Runtime`.

    A tower runs in ONNX Runtime (fp32, int8; CUDA with onnxruntime-gpu) or in OpenVINO (fp32, bf16); the two
    towers may differ, so that a check which passes int8 for the image tower only speeds indexing up without
    touching query vectors. ``precision``/``providers`` alone mean ONNX Runtime for both, as before."""

    def __init__(self, folder: Path, spec: ModelSpec | None = None, *, threads: int | None = None,
                 precision: Precision = "fp32", providers: Sequence[str] | None = None,
                 runtimes: dict[str, Runtime] | None = None, **kwargs: object) -> None:
        super().__init__(spec or modeldir.read_model_dir_spec(folder), **kwargs)  # type: ignore[arg-type]
        self.folder = folder
        self.threads = threads or default_threads()
        self.runtimes = runtimes or {t: Runtime("onnxruntime", precision) for t in TOWERS}
        self._run = {t: self._open(t, self.runtimes[t], providers) for t in TOWERS}

    @property
    def precision(self) -> str:
        """The precision of both towers, or ``text/image`` when they differ."""
        text, image = self.runtimes["text"].precision, self.runtimes["image"].precision
        return text if text == image else f"{text}/{image}"

    def describe(self) -> str:
        text, image = self.runtimes["text"], self.runtimes["image"]
        return str(text) if text == image else f"text: {text}; images: {image}"

    def _open(self, tower: str, runtime: Runtime, providers: Sequence[str] | None) -> Any:
        if runtime.backend == "openvino":
            return _openvino_tower(self.folder / f"{tower}.onnx", runtime.precision, self.threads)
        if providers is None and runtime.device == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return _onnxruntime_tower(tower_path(self.folder, tower, runtime.precision), self.threads, providers)

    def _encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return np.asarray(self._run["text"](tokens))

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._run["image"](pixels))


class OpenVinoEncoder(OnnxEncoder):
    """Both towers in OpenVINO on the CPU, at fp32 or bf16."""

    def __init__(self, folder: Path, spec: ModelSpec | None = None, *, threads: int | None = None,
                 precision: Precision = "bf16", **kwargs: object) -> None:
        super().__init__(folder, spec, threads=threads,
                         runtimes={t: Runtime("openvino", precision) for t in TOWERS}, **kwargs)  # type: ignore[arg-type]


def _onnxruntime_tower(path: Path, threads: int, providers: Sequence[str] | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    available = ort.get_available_providers()
    chosen = list(providers) if providers else [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                               if p in available]
    session = ort.InferenceSession(str(path), options, providers=chosen)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]  # InferenceSession.run is thread-safe


def _openvino_tower(path: Path, precision: str, threads: int) -> Any:
    """A tower compiled by OpenVINO's CPU plugin (``INFERENCE_PRECISION_HINT`` f32 or bf16).

    Compiled from the same ONNX file as ONNX Runtime reads (the text tower keeps its dynamic sequence length, so
    the early exit at the longest caption still applies), and cached on disk under ``$CLIPSEEK_CACHE/openvino``,
    keyed by the file's checksum, so the next start skips compiling. One infer request per thread: the server
    embeds queries from several threads at once."""
    import openvino as ov

    if precision not in ("fp32", "bf16"):
        raise ModelError(f"OpenVINO runs fp32 or bf16 here, not {precision!r}: int8 runs in ONNX Runtime")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    cache = openvino_cache_dir(path, precision)
    try:  # a cache folder that cannot be written (another user's) costs a compile per start, not the model
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK | os.X_OK):
            config["CACHE_DIR"] = str(cache)
    except OSError:
        pass
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except RuntimeError as exc:  # OpenVINO's first line names its own source file; the reason comes after
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if not line.startswith("Exception from")), lines[0] if lines else "")
        raise ModelError(f"OpenVINO could not compile {path} ({reason}): "
                         "use --backend onnxruntime") from exc
    local = threading.local()

    def run(x: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        return np.array(request.infer([x], share_inputs=True, share_outputs=True)[0])

    run.compiled = compiled  # type: ignore[attr-defined]
    return run


def openvino_cache_dir(onnx: Path, precision: str) -> Path:
    """Where OpenVINO keeps ``onnx`` compiled: keyed by the file's checksum (from the manifest when it has one,
    so a start reads no 350 MB file to hash it) and the precision, so a re-exported model is never served stale."""
    from .. import paths

    try:
        digest = modeldir.read_manifest(onnx.parent).get("files", {}).get(onnx.name)
    except ModelError:
        digest = None
    if digest is None:
        st = onnx.stat()
        digest = hashlib.sha256(f"{onnx.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return paths.cache_dir() / "openvino" / f"{digest[:24]}-{precision}"


def open_encoder(folder: Path, spec: ModelSpec | None = None, *, runtime: Runtime | dict[str, Runtime] | None = None,
                 threads: int | None = None, **kwargs: Any) -> OnnxEncoder:
    """The encoder for an exported model folder: one ``runtime`` for both towers, one per tower
    (``{"text": ..., "image": ...}``), or None to choose each tower's automatically."""
    if runtime is None:
        from .check import read_record

        measured = read_record(folder)
        runtimes = {t: choose(measured=measured, tower=t) for t in TOWERS}
    elif isinstance(runtime, Runtime):
        runtimes = {t: runtime for t in TOWERS}
    else:
        runtimes = dict(runtime)
    return OnnxEncoder(folder, spec, threads=threads, runtimes=runtimes, **kwargs)


def tower_path(folder: Path, tower: str, precision: Precision) -> Path:
    """The ONNX file of one tower; the int8 variant is made on first use (MatMul weights, per channel)."""
    fp32 = folder / f"{tower}.onnx"
    if precision == "fp32":
        return fp32
    if precision != "int8":
        raise ModelError(f"unknown precision {precision!r}: use 'fp32' or 'int8'")
    from .quantize import int8_path, quantize_int8

    int8 = int8_path(fp32)
    return int8 if int8.is_file() else quantize_int8(fp32, int8)
