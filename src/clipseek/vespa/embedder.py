"""A model's text tower in the form Vespa's ``hugging-face-embedder`` takes, so Vespa itself embeds ``input=``.

Vespa's embedder (docs.vespa.ai, reference/rag/embedding) tokenizes with a Hugging Face ``tokenizer.json``, feeds
the ONNX model ``input_ids`` and ``attention_mask`` (``[1, n]``, no padding, no ``token_type_ids`` when configured
empty), reads one output ``[1, n, D]`` and pools it with ``mean`` or ``cls`` (the first position). CLIP pools on
the end-of-text token inside the model, so the exported graph wraps clipseek's own text tower:

* ``input_ids × attention_mask`` feeds the tower, so the mask Vespa sends is an input the graph uses; padded
  positions become 0, CLIP's pad id (pooling picks the end-of-text token, the highest id, padded or not);
* the pooled, projected vector is returned as ``pooled_text_embeds [batch, 1, D]`` — position 0 is where
  ``pooling-strategy: cls`` picks it.

The tokenizer file reproduces :class:`clipseek.tokenizer.Tokenizer` with the ``tokenizers`` library's parts
(NFC, whitespace folding, lower-casing, CLIP's pre-tokenizer regex, byte-level BPE with ``</w>`` word ends,
start/end-of-text around every text, truncation to 77 keeping end-of-text last, and the common HTML entities
un-escaped). What has no counterpart there is ``ftfy``'s repair of mojibake and ligatures, and HTML entities beyond
``&amp; &lt; &gt; &quot; &#39;``: texts that need those tokenize differently in Vespa (none of Flickr8k's 40,455
captions does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VespaExportError
from ..models.export import TEXT_INPUT, TEXT_OUTPUT
from ..tokenizer import EOT_TEXT, SOT_TEXT, get_tokenizer

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POOLED_OUTPUT = "pooled_text_embeds"
TOKENIZER_FILE = "clip-bpe-tokenizer.json"
# CLIP's pre-tokenizer without the special-token alternatives (tokenizers matches added tokens itself).
PRETOKENIZE_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


@dataclass(frozen=True)
class EmbedderFiles:
    """What :func:`write_embedder` wrote, relative to the application package root."""

    model: str
    max_tokens: int
    dim: int


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VespaExportError(
            "writing the tokenizer for Vespa's embedder needs the `tokenizers` package: "
            "pip install 'clipseek[vespa]'") from exc
    return tokenizers


def build_tokenizer(context_length: int = 77) -> Any:
    """A ``tokenizers.Tokenizer`` giving the same ids as clipseek's CLIP tokenizer (see the module notes)."""
    tk = _tokenizers()
    from tokenizers import (
        Regex,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    ours = get_tokenizer(context_length)
    vocab = dict(ours.encoder)
    merges = [(a, b) for (a, b), _rank in sorted(ours.bpe_ranks.items(), key=lambda kv: kv[1])]
    bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=None, fuse_unk=False)
    tokenizer = tk.Tokenizer(bpe)
    # open_clip un-escapes HTML twice; the five entities captions carry are replaced the same way here.
    entities = [("&amp;", "&"), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'")]
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(), *(normalizers.Replace(a, b) for a, b in entities),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.add_special_tokens([SOT_TEXT, EOT_TEXT])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TEXT} $A {EOT_TEXT}",
        special_tokens=[(SOT_TEXT, ours.sot_token_id), (EOT_TEXT, ours.eot_token_id)])
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    tokenizer.enable_truncation(max_length=context_length)
    if tokenizer.token_to_id(SOT_TEXT) != ours.sot_token_id or tokenizer.token_to_id(EOT_TEXT) != ours.eot_token_id:
        raise VespaExportError("special token ids moved while building the tokenizer file: this is a bug")
    return tokenizer


def embedder_graph(text_onnx: Path) -> Any:
    """clipseek's text tower (``input_ids → text_embeds [b, D]``) wrapped for the embedder (see module notes)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(text_onnx))
    graph = model.graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [TEXT_INPUT] or outputs != [TEXT_OUTPUT]:
        raise VespaExportError(f"{text_onnx} has inputs {inputs} and outputs {outputs}, not the "
                               f"[{TEXT_INPUT}] → [{TEXT_OUTPUT}] of a clipseek text tower: re-export the model")
    dim = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    masked, pooled = "clipseek_masked_input_ids", "clipseek_text_embeds"
    for node in graph.node:
        node.input[:] = [masked if name == TEXT_INPUT else name for name in node.input]
        node.output[:] = [pooled if name == TEXT_OUTPUT else name for name in node.output]
    axes = helper.make_tensor("clipseek_axis_1", TensorProto.INT64, [1], [1])
    graph.initializer.append(axes)
    graph.node.insert(0, helper.make_node("Mul", [INPUT_IDS, ATTENTION_MASK], [masked], name="clipseek_mask_ids"))
    graph.node.append(helper.make_node("Unsqueeze", [pooled, "clipseek_axis_1"], [POOLED_OUTPUT],
                                       name="clipseek_pooled_at_position_0"))
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "sequence"]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch", 1, dim]))
    onnx.checker.check_model(model)
    return model


def write_embedder(text_onnx: Path, package: Path, slug: str, context_length: int = 77) -> EmbedderFiles:
    """Write ``models/<slug>_text.onnx`` into the package at ``package``."""
    import onnx

    (package / "models").mkdir(parents=True, exist_ok=True)
    model = embedder_graph(text_onnx)
    dim = model.graph.output[0].type.tensor_type.shape.dim[2].dim_value
    rel = f"models/{slug}_text.onnx"
    onnx.save(model, str(package / rel))
    return EmbedderFiles(model=rel, max_tokens=context_length, dim=dim)


def write_tokenizer(package: Path, context_length: int = 77) -> Path:
    """Write ``models/clip-bpe-tokenizer.json``, the one tokenizer file every CLIP embedder of the package reads."""
    path = package / "models" / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tokenizer_json(build_tokenizer(context_length)), encoding="utf-8")
    return path


def tokenizer_json(tokenizer: Any) -> str:
    """The tokenizer file in the form every Vespa 8 reads: BPE merges as ``"a b"`` strings.

    tokenizers >= 0.20 writes merges as pairs (``[["i", "n"], ...]``), which the tokenizers 0.19.1 that Vespa
    bundled (through DJL) until 8.466.24 cannot read, so the container would not start ("data did not match any
    variant of untagged enum ModelWrapper"). Strings load in 0.15 through 0.23 with the same ids: no CLIP merge
    token contains a space (checked here)."""
    doc = json.loads(tokenizer.to_str())
    merges = doc["model"]["merges"]
    for i, merge in enumerate(merges):
        if isinstance(merge, list):
            if any(" " in part for part in merge):
                raise ValueError(f"merge {merge!r} holds a space and cannot be written as one string")
            merges[i] = " ".join(merge)
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
