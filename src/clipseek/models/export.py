"""Export a torch CLIP (open_clip's ``CLIP`` class) to two ONNX files: ``text.onnx`` and ``image.onnx``.

This is the one path every model takes to ONNX — real weights from the hub and the tiny model trained here.
The text tower is exported with a dynamic sequence length so that the encoder can cut a batch at its longest
end-of-text token (exact, because the text transformer is causal). Needs the ``[export]`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportDependencyError

OPSET = 17
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"
IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ExportDependencyError("this model", "torch") from exc
    return torch


def text_tower(clip: Any) -> Any:
    """A module computing ``clip.encode_text`` (unnormalised) for any sequence length ≤ the context."""
    torch = _torch()
    from open_clip.transformer import text_global_pool

    class TextTower(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.token_embedding = clip.token_embedding
            self.positional_embedding = clip.positional_embedding
            self.transformer = clip.transformer
            self.ln_final = clip.ln_final
            self.text_projection = clip.text_projection
            self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
            self.pool_type = clip.text_pool_type
            self.eos_id = getattr(clip, "text_eos_id", None)

        def forward(self, input_ids: Any) -> Any:
            n = input_ids.shape[1]
            x = self.token_embedding(input_ids) + self.positional_embedding[:n]
            mask = self.attn_mask[:n, :n] if self.attn_mask is not None else None
            x = self.ln_final(self.transformer(x, attn_mask=mask))
            x = text_global_pool(x, input_ids, self.pool_type, eos_token_id=self.eos_id)
            if self.text_projection is None:
                return x
            if isinstance(self.text_projection, torch.nn.Linear):
                return self.text_projection(x)
            return x @ self.text_projection

    return TextTower().eval()


def _onnx_friendly(clip: Any) -> Any:
    """A copy of ``clip`` whose attention layers trace with dynamic batch and sequence sizes.

    ``nn.MultiheadAttention`` bakes the traced sequence length into its reshapes; this plain version computes
    the same function (self-attention, additive mask) with shape-free reshapes.
    """
    import copy

    torch = _torch()
    functional = torch.nn.functional

    class Attention(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, mha: Any) -> None:
            super().__init__()
            self.heads = mha.num_heads
            self.scale = float(mha.head_dim) ** -0.5
            self.in_proj_weight, self.in_proj_bias = mha.in_proj_weight, mha.in_proj_bias
            self.out_proj = mha.out_proj

        def forward(self, x: Any, *_: Any, attn_mask: Any = None, **__: Any) -> tuple[Any, None]:
            qkv = functional.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
            scores = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                scores = scores + attn_mask
            out = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
            return self.out_proj(out), None

    clip = copy.deepcopy(clip)
    for module in list(clip.modules()):
        attn = getattr(module, "attn", None)
        if isinstance(attn, torch.nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.batch_first:
            module.attn = Attention(attn)
    return clip


def export_towers(clip: Any, out_dir: Path, *, image_size: int, context_length: int = 77,
                  towers: tuple[str, ...] = ("text", "image")) -> tuple[Path, Path]:
    """Write ``text.onnx`` and ``image.onnx`` (batch and sequence dims dynamic) into ``out_dir``.

    ``towers`` limits what is written: a text-only fine-tune keeps its base's ``image.onnx`` byte for byte.
    """
    torch = _torch()
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = _onnx_friendly(clip.eval().float())
    text_path, image_path = out_dir / "text.onnx", out_dir / "image.onnx"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX symbolic
    try:
        if "text" in towers:
            _export_text(torch, clip, text_path, context_length)
        if "image" in towers:
            _export_image(torch, clip, image_path, image_size)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return text_path, image_path


def _export_text(torch: Any, clip: Any, text_path: Path, context_length: int) -> None:
    import warnings

    tokens = torch.zeros((2, context_length), dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 49406, 49407
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about shape checks that hold for every input
        torch.onnx.export(
            text_tower(clip), (tokens,), str(text_path), input_names=[TEXT_INPUT], output_names=[TEXT_OUTPUT],
            dynamic_axes={TEXT_INPUT: {0: "batch", 1: "sequence"}, TEXT_OUTPUT: {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )


def _export_image(torch: Any, clip: Any, image_path: Path, image_size: int) -> None:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = torch.zeros((2, 3, image_size, image_size), dtype=torch.float32)
        torch.onnx.export(
            clip.visual.eval(), (pixels,), str(image_path), input_names=[IMAGE_INPUT], output_names=[IMAGE_OUTPUT],
            dynamic_axes={IMAGE_INPUT: {0: "batch"}, IMAGE_OUTPUT: {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
