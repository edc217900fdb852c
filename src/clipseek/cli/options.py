"""Options several commands share: which engine runs the model, at which precision, on which device."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..models.runtime import BACKENDS, DEVICES, PRECISIONS

F = Callable[..., Any]


def runtime_options(fn: F) -> F:
    """``--backend``, ``--precision``, ``--device``: each ``auto`` by default, each with its environment variable."""
    fn = click.option(
        "--device", type=click.Choice(["auto", *DEVICES]), default="auto", envvar="CLIPSEEK_DEVICE",
        show_envvar=True, help="cuda runs ONNX Runtime's CUDA provider (pip uninstall -y onnxruntime && pip install "
             "'clipseek[gpu]'). [default: cpu]",
    )(fn)
    fn = click.option(
        "--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", envvar="CLIPSEEK_PRECISION",
        show_envvar=True,
        help="auto: the fastest precision that passed `clipseek models check NAME` for this model on this machine; "
             "unchecked, bf16 where the CPU has it (AVX512_BF16 or AMX) under OpenVINO, else fp32 - never int8. "
             "The thresholds and how agreement is measured: `clipseek models check --help`.",
    )(fn)
    fn = click.option(
        "--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", envvar="CLIPSEEK_BACKEND",
        show_envvar=True,
        help="Inference engine. auto: what `clipseek models check` found fastest; unchecked, OpenVINO where the CPU "
             "has bf16, else ONNX Runtime.",
    )(fn)
    return fn
