"""Vespa's JSON and text forms of a dense ``tensor<float>(x[N])``, read and written.

Accepted (Vespa's document and query APIs): a plain list, ``{"values": [...]}``, ``{"cells": [...]}`` or the
bare list of cell objects, a hex string of IEEE-754 float32 bits (bare or as ``{"values": "3F80..."}``), the
text forms ``[1,2,3]``, ``tensor<float>(x[3]):[1,2,3]`` and ``{{x:0}:1.0,{x:1}:2.0}``. A ``"type"`` key is ignored.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np

from .errors import VectorError

TENSOR_FORMS = ("short", "long", "short-value", "long-value", "hex", "hex-value")
MAX_CELLS = 65_536  # no CLIP model has more dimensions; a larger cell label is a mistake or an attack
_CELL = re.compile(r"\{\s*x\s*:\s*(\d+)\s*\}\s*:\s*([-+0-9.eE]+|nan|inf|-inf)")


def parse_tensor(value: Any, what: str = "tensor") -> np.ndarray:
    """Any accepted form → float32 vector; :class:`VectorError` saying what was wrong otherwise."""
    try:
        return _parse(value, what)
    except VectorError:
        raise
    except (ValueError, TypeError, KeyError, struct.error, OverflowError, RecursionError) as exc:
        raise VectorError(f"{what}: cannot read a dense tensor from {str(value)[:80]!r} ({exc})") from None


def _parse(value: Any, what: str) -> np.ndarray:
    if isinstance(value, dict):
        if "values" in value:
            return _parse(value["values"], what)
        if "cells" in value:
            return _from_cells(value["cells"])
        raise VectorError(f"{what}: a tensor object needs 'values' or 'cells'")
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            return _from_cells(value)
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim != 1:
            raise VectorError(f"{what}: expected a flat list of numbers, got shape {arr.shape}")
        return arr
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("tensor"):
            text = text.split(":", 1)[1].strip()
        if text.startswith("["):
            return _parse(json.loads(text), what)
        if text.startswith("{"):
            cells = _CELL.findall(text)
            if not cells:
                raise VectorError(f"{what}: cannot read tensor cells from {text[:80]!r}")
            return _dense({int(i): float(v) for i, v in cells})
        if re.fullmatch(r"[0-9A-Fa-f]+", text) and len(text) % 8 == 0:
            raw = bytes.fromhex(text)
            return np.asarray(struct.unpack(f">{len(raw) // 4}f", raw), dtype=np.float32)
        raise VectorError(f"{what}: {text[:80]!r} is not a tensor (use a list of numbers)")
    raise VectorError(f"{what}: expected a list of numbers, got {type(value).__name__}")


def _from_cells(cells: Any) -> np.ndarray:
    return _dense({int(c["address"]["x"]): float(c["value"]) for c in cells})


def _dense(cells: dict[int, float]) -> np.ndarray:
    bad = [i for i in cells if not 0 <= i < MAX_CELLS]
    if bad:
        raise VectorError(f"tensor cell label x={bad[0]} is outside 0..{MAX_CELLS - 1}")
    out = np.zeros(max(cells) + 1 if cells else 0, dtype=np.float32)
    for i, v in cells.items():
        out[i] = v
    return out


def render_tensor(vec: np.ndarray, form: str = "short") -> Any:
    """Vespa's rendering of a dense tensor for ``format.tensors`` = short (default), long, *-value, hex."""
    values = [float(v) for v in np.asarray(vec, dtype=np.float32)]
    ttype = f"tensor<float>(x[{len(values)}])"
    if form in ("short", "short-value"):
        return values if form == "short-value" else {"type": ttype, "values": values}
    if form in ("long", "long-value"):
        cells = [{"address": {"x": str(i)}, "value": v} for i, v in enumerate(values)]
        return cells if form == "long-value" else {"type": ttype, "cells": cells}
    if form in ("hex", "hex-value"):
        text = struct.pack(f">{len(values)}f", *values).hex().upper()
        return text if form == "hex-value" else {"type": ttype, "values": text}
    raise VectorError(f"unknown format.tensors {form!r}: use short, long, short-value, long-value, hex or hex-value")
