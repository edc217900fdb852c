"""The opt-in int8 variant of a tower: dynamic quantisation of MatMul weights, per output channel.

Only MatMul is quantised: quantised convolutions (ConvInteger) are several times slower than fp32 on CPUs
(RN50 measured 3.7× slower here), while int8 MatMul roughly doubles ViT throughput. Cosine to fp32 and speed:
bench/encoders.py, figures in bench/README.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import paths
from . import modeldir


def int8_path(fp32: Path) -> Path:
    """Where the int8 variant of ``fp32`` is cached: keyed by the fp32 file's checksum (works for read-only dirs)."""
    return paths.cache_dir() / "int8" / f"{modeldir.sha256_file(fp32)}-r7.onnx"  # r7: 7-bit weights (reduce_range)


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantisation of the MatMul weights, per channel, in 7 bits (``reduce_range``): on CPUs
    without VNNI (AVX2, and AVX-512 before Cascade Lake) ONNX Runtime's u8·s8 kernels add pairs of products in
    saturating 16-bit lanes, and 8-bit weights overflow them (a random-init ViT-B/32 image vector fell to
    cos 0.9896 to fp32 on an AVX2 EPYC); 7 bits cannot."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # quantize_dynamic warns on the root logger to pre-process first
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        quantize_dynamic(str(fp32), tmp, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul"])
        os.replace(tmp, out)
    finally:
        root.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
