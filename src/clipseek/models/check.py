"""``clipseek models check``: how closely each backend and precision agrees with fp32 on *these* model files,
and how fast each runs on *this* machine; the record decides the default precision.

The reference is ONNX Runtime fp32 (the towers as exported). Every other variant this machine can run (OpenVINO
fp32 and bf16, ONNX Runtime int8) embeds the same calibration set: scenes rendered by :mod:`clipseek.synth`
from a fixed seed (no photo ships with the package), at the model's own image size, and their captions. Each
tower is judged on its own, since a precision may suit one and not the other. A variant's image tower passes
when

* every image vector has cosine ≥ :data:`MIN_COS` to fp32's, and
* text → image search with fp32 captions keeps, on average, ≥ :data:`MIN_OVERLAP` of fp32's top 10 images;

its text tower likewise, with every caption vector and fp32 images.

With no precision asked for, clipseek runs each tower on the fastest variant that passed for it (image
throughput on a batch of the calibration images; one query's latency for text), a less exact variant needing to
be 10 % faster; without a record it never picks int8. The record is kept under
``$CLIPSEEK_CACHE/checks``, keyed by the towers' checksums and this CPU, and is written by ``clipseek models
check`` and by ``clipseek models fetch``.
"""

from __future__ import annotations

import functools
import json
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import paths
from ..errors import ModelError
from . import modeldir
from .runtime import Runtime, cpu_has_bf16, cpuinfo, openvino_available

MIN_COS = 0.9995  # the bar for the default: bf16 measured 0.99994, int8 images 0.9998 on ViT-B/32
MIN_OVERLAP = 0.9
CALIBRATION_IMAGES = 128
CALIBRATION_SEED = 20261129
TOP = 10


def _machine() -> str:
    return f"{platform.machine()} {cpuinfo().get('model name') or platform.processor()} bf16={cpu_has_bf16()}"


def record_path(folder: Path) -> Path | None:
    try:
        files = modeldir.read_manifest(folder).get("files", {})
    except ModelError:
        return None
    text, image = files.get(modeldir.TEXT_FILE), files.get(modeldir.IMAGE_FILE)
    if not text or not image:
        return None
    return paths.cache_dir() / "checks" / f"{text[:16]}-{image[:16]}.json"


def read_record(folder: Path) -> dict[str, Any] | None:
    """The check recorded for this model folder on this machine, or None."""
    path = record_path(folder)
    if path is None or not path.is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # a torn write: the next check rewrites it
    return doc if doc.get("machine") == _machine() else None


def variants() -> list[Runtime]:
    """Every (backend, precision) this machine can run on the CPU, the fp32 reference first."""
    out = [Runtime("onnxruntime", "fp32")]
    if openvino_available():
        out.append(Runtime("openvino", "fp32"))
        if cpu_has_bf16():
            out.append(Runtime("openvino", "bf16"))
    out.append(Runtime("onnxruntime", "int8"))
    return out


def calibration(image_size: int, n: int = CALIBRATION_IMAGES) -> tuple[list[Any], list[str], np.ndarray]:
    """(images, captions, image row of each caption): synth scenes at the model's size, two captions each."""
    from .. import synth

    rng = random.Random(CALIBRATION_SEED + 1)
    images, texts, rows = [], [], []
    for i, scene in enumerate(synth.sample_scenes(n, CALIBRATION_SEED)):
        images.append(synth.render(scene, rng, size=max(image_size, 64), variant="shifted" if i % 2 else "original"))
        for caption in synth.captions(scene, rng)[:2]:
            texts.append(caption)
            rows.append(i)
    return images, texts, np.asarray(rows)


def check_model(folder: Path, *, threads: int | None = None, say: Callable[[str], None] | None = None,
                write: bool = True) -> dict[str, Any]:
    """Measure every variant against ONNX Runtime fp32 on the calibration set; write and return the record."""
    from .encoder import open_encoder

    say = say or (lambda _m: None)
    spec = modeldir.read_model_dir_spec(folder)
    pil_images, texts, _ = calibration(spec.image_size)
    reference = None
    rows = []
    for runtime in variants():
        say(f"checking {runtime}")
        started = time.perf_counter()
        encoder = open_encoder(folder, spec, runtime=runtime, threads=threads)
        load_s = time.perf_counter() - started
        pixels = np.stack([encoder.preprocess_image(img) for img in pil_images])
        image = encoder.embed_pixels(pixels)
        text = encoder.embed_texts(texts)
        batch = pixels[: min(32, len(pixels))]
        encoder.embed_pixels(batch)  # warm
        best = min(_timed(functools.partial(encoder.embed_pixels, batch)) for _ in range(3))
        query = min(_timed(functools.partial(encoder.embed_texts, texts[:1])) for _ in range(20))
        row: dict[str, Any] = {"backend": runtime.backend, "precision": runtime.precision, "device": "cpu",
                               "load_s": round(load_s, 3), "images_per_s": round(len(batch) / best, 2),
                               "text_ms": round(query * 1000, 3)}
        if reference is None:
            reference = (image, text, _top(text, image))
        ref_image, ref_text, ref_top = reference
        cos_i = float(np.min(np.sum(image * ref_image, axis=1)))
        cos_t = float(np.min(np.sum(text * ref_text, axis=1)))
        overlap_i = _overlap(ref_top, _top(ref_text, image))
        overlap_t = _overlap(ref_top, _top(text, ref_image))
        row.update(min_cos_image=round(cos_i, 6), top10_overlap_image=round(overlap_i, 4),
                   image_passed=bool(cos_i >= MIN_COS and overlap_i >= MIN_OVERLAP),
                   min_cos_text=round(cos_t, 6), top10_overlap_text=round(overlap_t, 4),
                   text_passed=bool(cos_t >= MIN_COS and overlap_t >= MIN_OVERLAP))
        rows.append(row)
        say(f"  {runtime}: images {row['images_per_s']:.1f}/s, min cos {cos_i:.5f}, top-10 kept {overlap_i:.3f} "
            f"→ {'passed' if row['image_passed'] else 'failed'}; one query {row['text_ms']:.2f} ms, min cos "
            f"{cos_t:.5f}, top-10 kept {overlap_t:.3f} → {'passed' if row['text_passed'] else 'failed'}")
    doc = {"model": spec.name, "folder": str(folder), "machine": _machine(), "thresholds":
           {"min_cos": MIN_COS, "top10_overlap": MIN_OVERLAP}, "calibration": {"images": len(pil_images),
           "captions": len(texts), "seed": CALIBRATION_SEED}, "variants": rows,
           "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = record_path(folder)
    if write and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    return doc


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a.tolist(), b.tolist())]))


def _top(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    k = min(TOP, len(image))
    return np.argsort(-(text @ image.T), axis=1, kind="stable")[:, :k]
