"""Which engine runs the towers, at which precision: chosen from what is installed, what the CPU offers and
what ``clipseek models check`` measured, and overridable.

=============  ==================================================================================
backend        ``onnxruntime`` (always installed) or ``openvino`` (installed with clipseek where its
               wheels exist)
precision      ``fp32``; ``bf16`` (OpenVINO, on CPUs with AVX512_BF16 or AMX: fp32's range, half its
               mantissa); ``int8`` (ONNX Runtime, MatMul weights quantised per channel)
device         ``cpu``, or ``cuda`` (ONNX Runtime's CUDA execution provider, from onnxruntime-gpu)
=============  ==================================================================================

The automatic choice on a CPU: OpenVINO bf16 where it is installed and the CPU has bf16 instructions, else
ONNX Runtime fp32 (on an AVX2 CPU it ran ViT-B/32 faster than OpenVINO fp32: bench/README.md). ``int8`` is
never chosen blindly: only when ``clipseek models check`` recorded, for these very model files, that int8 agrees
with fp32 (see :mod:`clipseek.models.check`) and that it was the fastest precision that did.

Each choice can be forced: ``--backend``/``--precision``/``--device`` on the commands, or ``CLIPSEEK_BACKEND``,
``CLIPSEEK_PRECISION``, ``CLIPSEEK_DEVICE`` in the environment (what ``clipseek serve`` and library users read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, cast

from ..errors import ModelError

Backend = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
Device = Literal["cpu", "cuda"]
BACKENDS: tuple[Backend, ...] = ("onnxruntime", "openvino")
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")
DEVICES: tuple[Device, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class Runtime:
    """A resolved choice, with the reason it was made (shown by ``clipseek models check`` and ``--verbose``)."""

    backend: Backend
    precision: Precision
    device: Device = "cpu"
    reason: str = "asked for"

    def __str__(self) -> str:
        return f"{self.backend} {self.precision} on {self.device}"


@lru_cache(maxsize=1)
def openvino_available() -> bool:
    """Whether OpenVINO is installed, without importing it (an import costs ~0.5 s of a one-off search)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first CPU's fields from Linux's /proc/cpuinfo (``model name``, ``flags``, …); empty elsewhere."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when OpenVINO can run bf16 natively: CPUs with AVX512_BF16 or AMX. On Linux read from the kernel's
    CPU flags (no OpenVINO import); elsewhere OpenVINO's CPU plugin is asked (it lists BF16 among its
    capabilities only on such CPUs)."""
    if not openvino_available():
        return False
    flags = cpuinfo().get("flags")
    if flags is not None:
        return bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _pick(value: str | None, env: str, allowed: tuple[str, ...], what: str) -> str | None:
    source = f"--{what}"
    if value in (None, "auto"):
        value, source = os.environ.get(env) or None, f"${env}"
    if value in (None, "auto"):
        return None
    if value not in allowed:
        raise ModelError(f"unknown {what} {value!r} (from {source}): use one of auto, {', '.join(allowed)}")
    return value


def choose(backend: str | None = None, precision: str | None = None, device: str | None = None,
           measured: Mapping[str, Any] | None = None, tower: str = "image") -> Runtime:
    """Resolve ``auto`` (None) parts for one tower (``text`` or ``image``); ``measured`` is the record
    ``clipseek models check`` wrote for the model, which judges and times each tower on its own."""
    b = _pick(backend, "CLIPSEEK_BACKEND", BACKENDS, "backend")
    p = _pick(precision, "CLIPSEEK_PRECISION", PRECISIONS, "precision")
    d = _pick(device, "CLIPSEEK_DEVICE", DEVICES, "device") or "cpu"
    if d == "cuda":
        if b == "openvino":
            raise ModelError("--device cuda runs in ONNX Runtime: drop --backend openvino")
        if p not in (None, "fp32"):
            raise ModelError(f"--device cuda runs fp32 here, not {p}: drop --precision")
        if not cuda_available():
            raise ModelError("no usable CUDA GPU: ONNX Runtime offers no CUDAExecutionProvider. Install its GPU build "
                             "in place of the CPU one (pip uninstall -y onnxruntime && pip install "
                             "'clipseek[gpu]') and check that `nvidia-smi` sees the GPU; or use --device cpu")
        return Runtime("onnxruntime", "fp32", "cuda", "asked for --device cuda")
    if b == "openvino" and not openvino_available():
        raise ModelError("--backend openvino needs OpenVINO: pip install openvino (or use --backend onnxruntime)")
    if p == "bf16":
        if b == "onnxruntime":
            raise ModelError("bf16 runs in OpenVINO: use --backend openvino (or --precision fp32)")
        if not openvino_available():
            raise ModelError("bf16 runs in OpenVINO, which is not installed: pip install openvino")
        if not cpu_has_bf16():
            raise ModelError("this CPU has no bf16 instructions (AVX512_BF16 or AMX), so bf16 would be emulated and "
                             "slower than fp32: use --precision fp32")
        return Runtime("openvino", "bf16", "cpu", "asked for" if precision else "$CLIPSEEK_PRECISION")
    if p == "int8":
        if b == "openvino":
            raise ModelError("int8 runs in ONNX Runtime: use --backend onnxruntime (or another precision)")
        return Runtime("onnxruntime", "int8", "cpu", "asked for")
    if p == "fp32":
        return Runtime(cast(Backend, b or "onnxruntime"), "fp32", "cpu", "asked for fp32")
    # precision auto: the fastest precision the model's own check passed, within the backend asked for
    if measured:
        best = fastest_passing(measured, backend=cast("Backend | None", b), tower=tower)
        if best is not None:
            return Runtime(best[0], best[1], "cpu", f"the fastest {tower} tower that passed `clipseek models check`")
    if b != "onnxruntime" and openvino_available():
        if cpu_has_bf16():
            return Runtime("openvino", "bf16", "cpu", "OpenVINO is installed and the CPU has bf16")
        if b == "openvino":
            return Runtime("openvino", "fp32", "cpu", "asked for openvino; the CPU has no bf16")
    # fp32 without bf16: ONNX Runtime, which ran ViT-B/32 faster than OpenVINO fp32 on an AVX2 CPU (bench/README)
    return Runtime("onnxruntime", "fp32", "cpu", "asked for onnxruntime" if b == "onnxruntime" else
                   "the CPU has no bf16" if openvino_available() else "OpenVINO is not installed")


MARGIN = 1.10  # a variant further from fp32 must be at least this much faster to be preferred (timings are noisy)
_EXACTNESS = {"fp32": 0, "bf16": 1, "int8": 2}


def fastest_passing(measured: Mapping[str, Any], backend: Backend | None = None, tower: str = "image"
                    ) -> tuple[Backend, Precision] | None:
    """From a ``clipseek models check`` record: the (backend, precision) whose ``tower`` passed and ran fastest
    (images per second for the image tower, one query's milliseconds for the text tower).

    Rows are taken from the most exact (ONNX Runtime fp32, the reference) on; a later row replaces the pick
    only when it is at least :data:`MARGIN` times faster, so noise in one timing never trades accuracy away."""
    rows = [r for r in measured.get("variants", []) if r.get(f"{tower}_passed")
            and (backend is None or r["backend"] == backend) and r.get("device", "cpu") == "cpu"]
    rows = [r for r in rows if r["backend"] != "openvino" or openvino_available()]
    rows = [r for r in rows if r["precision"] != "bf16" or cpu_has_bf16()]
    if not rows:
        return None
    rows.sort(key=lambda r: (_EXACTNESS.get(r["precision"], 9), r["backend"] != "onnxruntime"))
    def speed(row: Mapping[str, Any]) -> float:
        return float(row["images_per_s"]) if tower == "image" else 1.0 / float(row["text_ms"])

    best = rows[0]
    for row in rows[1:]:
        if speed(row) >= speed(best) * MARGIN:
            best = row
    return best["backend"], best["precision"]
