"""``clipseek models check``: how closely each backend and precision agrees with fp32 on *these* model files,
and how fast each runs on *this* machine; the record decides the default precision.

The reference is ONNX Runtime fp32 (the towers as exported). Every other variant this machine can run (OpenVINO
fp32 and bf16, ONNX Runtime int8) embeds the same calibration set: scenes rendered by :mod:`clipseek.synth`
from a fixed seed (no photo ships with the package), at the model's own image size, and their captions. A
variant passes when

* every image vector and every caption vector has cosine ≥ :data:`MIN_COS` to fp32's, and
* text → image search agrees: on average ≥ :data:`MIN_OVERLAP` of fp32's top 10 images are in the variant's
  top 10, caption by caption.

With no precision asked for, clipseek runs the fastest variant that passed (by image throughput, measured here
on a batch of the calibration images); without a record it never picks int8. The record is kept under
``$CLIPSEEK_CACHE/checks``, keyed by the towers' checksums and this CPU, and is written by ``clipseek models
check`` and by ``clipseek models fetch``.
"""

from __future__ import annotations

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
from .runtime import Runtime, cpu_has_bf16, openvino_available

MIN_COS = 0.995
MIN_OVERLAP = 0.9
CALIBRATION_IMAGES = 128
CALIBRATION_SEED = 20261129
TOP = 10


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {cpu or platform.processor()} bf16={cpu_has_bf16()}"


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
        best = min(_timed(lambda: encoder.embed_pixels(batch)) for _ in range(3))
        query = min(_timed(lambda: encoder.embed_texts(texts[:1])) for _ in range(20))
        row: dict[str, Any] = {"backend": runtime.backend, "precision": runtime.precision, "device": "cpu",
                               "load_s": round(load_s, 3), "images_per_s": round(len(batch) / best, 2),
                               "text_ms": round(query * 1000, 3)}
        if reference is None:
            reference = (image, text, _top(text, image))
            row.update(min_cos_image=1.0, min_cos_text=1.0, top10_overlap=1.0, passed=True)
        else:
            ref_image, ref_text, ref_top = reference
            cos_i = float(np.min(np.sum(image * ref_image, axis=1)))
            cos_t = float(np.min(np.sum(text * ref_text, axis=1)))
            top = _top(text, image)
            overlap = float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(ref_top, top)]))
            row.update(min_cos_image=round(cos_i, 6), min_cos_text=round(cos_t, 6), top10_overlap=round(overlap, 4),
                       passed=bool(cos_i >= MIN_COS and cos_t >= MIN_COS and overlap >= MIN_OVERLAP))
        rows.append(row)
        say(f"  {runtime}: {row['images_per_s']:.1f} img/s, one query {row['text_ms']:.1f} ms, "
            f"min cos image {row['min_cos_image']:.5f} text {row['min_cos_text']:.5f}, "
            f"top-10 overlap {row['top10_overlap']:.3f} → {'passed' if row['passed'] else 'FAILED'}")
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


def _top(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    k = min(TOP, len(image))
    return np.argsort(-(text @ image.T), axis=1, kind="stable")[:, :k]
