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
from ..transforms import DEFAULT_MAX_PIXELS, ImageInfo, ImageInput, open_image, preprocess
from . import modeldir
from .registry import ModelSpec
from .runtime import Precision, Runtime, choose


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
        self.runtime: Runtime | None = None  # set by open_encoder: the backend and precision it runs on
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


class OnnxEncoder(Encoder):
    """Both towers in ONNX Runtime: CPU by default, CUDA when onnxruntime-gpu offers it."""

    backend = "onnxruntime"

    def __init__(self, folder: Path, spec: ModelSpec | None = None, *, threads: int | None = None,
                 precision: Precision = "fp32", providers: Sequence[str] | None = None, **kwargs: object) -> None:
        super().__init__(spec or modeldir.read_model_dir_spec(folder), **kwargs)  # type: ignore[arg-type]
        import onnxruntime as ort

        if precision not in ("fp32", "int8"):
            raise ModelError(f"ONNX Runtime runs fp32 or int8, not {precision!r}: bf16 runs in OpenVINO")
        self.folder = folder
        self.precision = precision
        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        self.providers = list(providers) if providers else [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        self._text = ort.InferenceSession(str(tower_path(folder, "text", precision)), options, providers=self.providers)
        self._image = ort.InferenceSession(str(tower_path(folder, "image", precision)), options,
                                           providers=self.providers)
        self._text_in = self._text.get_inputs()[0].name
        self._image_in = self._image.get_inputs()[0].name

    def _encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return np.asarray(self._text.run(None, {self._text_in: tokens})[0])

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._image.run(None, {self._image_in: pixels})[0])


class OpenVinoEncoder(Encoder):
    """Both towers in OpenVINO on the CPU, at fp32 or bf16 (``INFERENCE_PRECISION_HINT``).

    The towers are compiled from the same ONNX files as :class:`OnnxEncoder` (the text tower keeps its dynamic
    sequence length, so the early exit at the longest caption still applies), and the compiled models are cached
    on disk under ``$CLIPSEEK_CACHE/openvino``, keyed by the files' checksums, so the next start skips compiling.
    An infer request per thread: the server embeds queries from several threads at once."""

    backend = "openvino"

    def __init__(self, folder: Path, spec: ModelSpec | None = None, *, threads: int | None = None,
                 precision: Precision = "bf16", **kwargs: object) -> None:
        super().__init__(spec or modeldir.read_model_dir_spec(folder), **kwargs)  # type: ignore[arg-type]
        import openvino as ov

        if precision not in ("fp32", "bf16"):
            raise ModelError(f"OpenVINO runs fp32 or bf16 here, not {precision!r}: int8 runs in ONNX Runtime")
        self.folder = folder
        self.precision = precision
        self.threads = threads or default_threads()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        self._compiled = {}
        for tower in ("text", "image"):
            path = folder / f"{tower}.onnx"
            config_t: dict[str, Any] = {**config, "CACHE_DIR": str(openvino_cache_dir(path, precision))}
            try:
                self._compiled[tower] = core.compile_model(str(path), "CPU", config_t)
            except RuntimeError as exc:
                raise ModelError(f"OpenVINO could not compile {path} ({str(exc).strip().splitlines()[0]}): "
                                 "use --backend onnxruntime") from exc
        self._local = threading.local()

    def _request(self, tower: str) -> Any:
        requests = self._local.__dict__.setdefault("requests", {})
        if tower not in requests:
            requests[tower] = self._compiled[tower].create_infer_request()
        return requests[tower]

    def _encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return np.array(self._request("text").infer([tokens], share_inputs=True, share_outputs=True)[0])

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return np.array(self._request("image").infer([pixels], share_inputs=True, share_outputs=True)[0])


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


def open_encoder(folder: Path, spec: ModelSpec | None = None, *, runtime: Runtime | None = None,
                 threads: int | None = None, **kwargs: Any) -> Encoder:
    """The encoder for an exported model folder on ``runtime`` (chosen automatically when None)."""
    if runtime is None:
        from .check import read_record

        runtime = choose(measured=read_record(folder))
    encoder: OnnxEncoder | OpenVinoEncoder
    if runtime.backend == "openvino":
        encoder = OpenVinoEncoder(folder, spec, threads=threads, precision=runtime.precision, **kwargs)
    else:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if runtime.device == "cuda" else \
            ["CPUExecutionProvider"]
        encoder = OnnxEncoder(folder, spec, threads=threads, precision=runtime.precision, providers=providers,
                              **kwargs)
    encoder.runtime = runtime
    return encoder


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
