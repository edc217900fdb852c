"""Build clipseek's two ONNX towers straight from a CLIP state dict, with numpy and the ``onnx`` package — no torch.

The weights are open_clip's own key layout (``visual.transformer.resblocks.0.attn.in_proj_weight``, …), as the
Hugging Face hub publishes them in ``open_clip_model.safetensors``; the architecture is the ``tower_config`` the
registry records for the model (open_clip's model config: ``embed_dim``, ``vision_cfg``, ``text_cfg``), never
guessed from tensor shapes. The files written are what :mod:`.export` writes from torch: ``text.onnx``
(``input_ids`` int64 ``[batch, sequence]`` → ``text_embeds``) and ``image.onnx`` (``pixel_values`` float32
``[batch, 3, size, size]`` → ``image_embeds``), both unnormalised, batch dynamic, the text sequence dynamic so
the encoder can cut a batch at its longest end-of-text token (exact: the text attention is causal).

Rules the graphs rely on (open_clip 3.3's ``CLIP``, eval mode):

* LayerNorm over the last axis, eps 1e-5; every block is pre-norm: ``x + attn(ln_1(x))``, then
  ``x + mlp(ln_2(x))``.
* Attention: queries scaled by ``head_dim ** -0.5`` (folded into the query weights here), softmax over the keys;
  the text tower adds a causal mask (−inf above the diagonal), the image towers none.
* The MLP's activation is QuickGELU ``x·σ(1.702·x)`` for weights trained with it (OpenAI's; the spec's
  ``quick_gelu``) and the exact erf GELU otherwise. Getting this wrong still runs, and costs accuracy silently.
* ViT readout: the class token (position 0), ``ln_post``, then ``@ proj``.
* Text readout: the position of the highest token id (end-of-text), after ``ln_final``, then ``@ text_projection``.
* ModifiedResNet: three stem convolutions and an average pool; bottlenecks that average-pool before a strided
  step (the block's and the shortcut's); BatchNorm (running statistics, eps 1e-5) folded into the convolution
  before it; then attention pooling, whose one query is the mean of the feature map prepended as position 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .export import IMAGE_INPUT, IMAGE_OUTPUT, OPSET, TEXT_INPUT, TEXT_OUTPUT
from .spec import ModelSpec

IR_VERSION = 8  # what torch's exporter writes at opset 17; every ONNX Runtime and OpenVINO clipseek runs reads it
LN_EPS = 1e-5
BN_EPS = 1e-5
# Keys a checkpoint may carry that no tower reads.
IGNORED_KEYS = ("logit_scale", "logit_bias", "attn_mask")
# clipseek's own weights files (train.save_weights) may keep only the token embedding rows training touched, with
# their ids under this key; the other rows are zeros.
COMPACT_TOKEN_IDS = "token_embedding.ids"

# What the builder implements, per part of open_clip's config; any other key, or another value of one listed with
# its default here, is a variant the builder refuses (the torch export path handles it).
_VIT_KEYS = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size"}
_RESNET_KEYS = {"image_size", "layers", "width", "head_width", "patch_size"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
    "pos_embed_type": "learnable", "final_ln_after_pool": False, "output_tokens": False,
    "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
    "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
    "timm_model_name": None, "hf_model_name": None, "hf_tokenizer_name": None, "tokenizer_mode": None,
    "tokenizer_kwargs": None, "embed_cls": False, "pad_id": 0, "no_causal_mask": False, "proj_bias": False,
    "proj_type": "linear",
}
_POOL_DEFAULT = {"vision_cfg": "tok", "text_cfg": "argmax"}  # the readouts the builder implements
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
             "custom_text"}


class BuildUnsupportedError(ModelError):
    """The builder does not implement this model (its architecture, or its weights' number format)."""


def unsupported(spec: ModelSpec) -> str | None:
    """Why the builder cannot build ``spec`` (a sentence), or None when it can."""
    config = spec.tower_config
    if not config:
        return f"the registry records no architecture (tower_config) for {spec.name}"
    why: list[str] = []
    why += [f"top-level {k}" for k in config if k not in _TOP_KEYS]
    if config.get("custom_text"):
        why.append("custom_text")
    vision, text = dict(config.get("vision_cfg", {})), dict(config.get("text_cfg", {}))
    resnet = isinstance(vision.get("layers"), (list, tuple))
    for part, cfg, known in (("vision_cfg", vision, _RESNET_KEYS if resnet else _VIT_KEYS),
                             ("text_cfg", text, _TEXT_KEYS)):
        for key, value in cfg.items():
            default = _POOL_DEFAULT[part] if key == "pool_type" else _DEFAULTS.get(key, ...)
            if key in known or value == default:
                continue
            why.append(f"{part}.{key}={value!r}")
    if resnet and len(vision["layers"]) != 4:
        why.append("a ResNet without four stages")
    return f"{spec.name} uses what the builder does not implement: {', '.join(why)}" if why else None


# --------------------------------------------------------------------------------------------------------------
# Weights in


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """A state dict from a ``.safetensors`` file (memory-mapped by the safetensors library) or a numpy ``.npz``."""
    if path.suffix == ".npz":
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise ModelError("reading safetensors needs the `safetensors` package: pip install safetensors") from exc
    state: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as fh:
            for key in fh.keys():
                state[key] = fh.get_tensor(key)
    except TypeError as exc:  # numpy has no bfloat16
        raise BuildUnsupportedError(f"{path}: {exc} (bfloat16 weights): the builder reads float32 and float16 "
                                    "weights only") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError for a truncated or foreign file
        raise ModelError(f"{path} is not a readable safetensors file ({exc}): delete it and fetch it again") from exc
    return state


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every key the towers read, with its shape, from the spec's architecture alone."""
    cfg = spec.tower_config
    embed = int(cfg["embed_dim"])
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    shapes: dict[str, tuple[int, ...]] = {}
    tw, ctx = int(text["width"]), int(text.get("context_length", 77))
    shapes["token_embedding.weight"] = (int(text.get("vocab_size", 49408)), tw)
    shapes["positional_embedding"] = (ctx, tw)
    shapes.update(_transformer_shapes("transformer", tw, int(text["layers"]), float(text.get("mlp_ratio", 4.0))))
    shapes.update({"ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, embed)})
    size, width = int(vision["image_size"]), int(vision["width"])
    if isinstance(vision["layers"], (list, tuple)):
        shapes.update(_resnet_shapes(list(vision["layers"]), width, size, embed))
        return shapes
    patch = int(vision["patch_size"])
    grid = size // patch
    shapes.update({
        "visual.conv1.weight": (width, 3, patch, patch), "visual.class_embedding": (width,),
        "visual.positional_embedding": (grid * grid + 1, width), "visual.proj": (width, embed),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
    })
    shapes.update(_transformer_shapes("visual.transformer", width, int(vision["layers"]),
                                      float(vision.get("mlp_ratio", 4.0))))
    return shapes


def _transformer_shapes(prefix: str, width: int, layers: int, mlp_ratio: float) -> dict[str, tuple[int, ...]]:
    hidden = int(width * mlp_ratio)
    out: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        out.update({
            f"{p}.ln_1.weight": (width,), f"{p}.ln_1.bias": (width,),
            f"{p}.attn.in_proj_weight": (3 * width, width), f"{p}.attn.in_proj_bias": (3 * width,),
            f"{p}.attn.out_proj.weight": (width, width), f"{p}.attn.out_proj.bias": (width,),
            f"{p}.ln_2.weight": (width,), f"{p}.ln_2.bias": (width,),
            f"{p}.mlp.c_fc.weight": (hidden, width), f"{p}.mlp.c_fc.bias": (hidden,),
            f"{p}.mlp.c_proj.weight": (width, hidden), f"{p}.mlp.c_proj.bias": (width,),
        })
    return out


def _bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")}


def _resnet_blocks(layers: list[int], width: int) -> list[tuple[str, int, int, int]]:
    """(key prefix, in channels, planes, stride) of every bottleneck, in order."""
    blocks, inplanes = [], width
    for stage, (count, stride) in enumerate(zip(layers, (1, 2, 2, 2)), start=1):
        planes = width * 2 ** (stage - 1)
        for i in range(count):
            blocks.append((f"visual.layer{stage}.{i}", inplanes, planes, stride if i == 0 else 1))
            inplanes = planes * 4
    return blocks


def _resnet_shapes(layers: list[int], width: int, size: int, embed: int) -> dict[str, tuple[int, ...]]:
    half = width // 2
    out: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (half, 3, 3, 3), "visual.conv2.weight": (half, half, 3, 3),
        "visual.conv3.weight": (width, half, 3, 3),
        **_bn_shapes("visual.bn1", half), **_bn_shapes("visual.bn2", half), **_bn_shapes("visual.bn3", width),
    }
    for prefix, inplanes, planes, stride in _resnet_blocks(layers, width):
        out.update({f"{prefix}.conv1.weight": (planes, inplanes, 1, 1),
                    f"{prefix}.conv2.weight": (planes, planes, 3, 3),
                    f"{prefix}.conv3.weight": (planes * 4, planes, 1, 1)})
        out.update({**_bn_shapes(f"{prefix}.bn1", planes), **_bn_shapes(f"{prefix}.bn2", planes),
                    **_bn_shapes(f"{prefix}.bn3", planes * 4)})
        if stride > 1 or inplanes != planes * 4:
            out[f"{prefix}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
            out.update(_bn_shapes(f"{prefix}.downsample.1", planes * 4))
    features, grid = width * 32, size // 32
    out["visual.attnpool.positional_embedding"] = (grid * grid + 1, features)
    for name in ("q_proj", "k_proj", "v_proj"):
        out.update({f"visual.attnpool.{name}.weight": (features, features),
                    f"visual.attnpool.{name}.bias": (features,)})
    out.update({"visual.attnpool.c_proj.weight": (embed, features), "visual.attnpool.c_proj.bias": (embed,)})
    return out


def check_state(state: Mapping[str, np.ndarray], spec: ModelSpec, source: str) -> None:
    """Raise one error naming the missing, unexpected and misshapen keys (a few of each, and how many)."""
    expected = expected_shapes(spec)

    def ignorable(key: str) -> bool:
        return key in IGNORED_KEYS or key.endswith(".num_batches_tracked")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not ignorable(k)]
    misshapen = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
                 for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise ModelError(f"{source} does not hold {spec.name}'s weights in open_clip's layout ({'; '.join(problems)}): "
                         "check that the file is this model's open_clip_model.safetensors")


# --------------------------------------------------------------------------------------------------------------
# Graphs out


def _full_token_table(state: Mapping[str, np.ndarray], spec: ModelSpec) -> Mapping[str, np.ndarray]:
    if COMPACT_TOKEN_IDS not in state:
        return state
    ids, rows = state[COMPACT_TOKEN_IDS], state["token_embedding.weight"]
    vocab = int(spec.tower_config["text_cfg"].get("vocab_size", 49408))
    table = np.zeros((vocab, rows.shape[1]), dtype=np.float32)
    table[ids] = rows
    return {**{k: v for k, v in state.items() if k != COMPACT_TOKEN_IDS}, "token_embedding.weight": table}


class _Graph:
    """A small ONNX graph writer: initializers from the state dict, one node per call, fresh value names."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list[Any] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._count = 0

    def weight(self, key: str) -> np.ndarray:
        return np.asarray(self.state[key], dtype=np.float32)

    def const(self, name: str, value: np.ndarray) -> str:
        if name in self.initializers:
            raise AssertionError(f"initializer {name} written twice")
        self.initializers[name] = np.array(value, order="C")  # keeps 0-d (ascontiguousarray would not)
        return name

    def shared(self, name: str, value: np.ndarray) -> str:
        """A small constant named by its value (``name``), written once and reused."""
        return name if name in self.initializers else self.const(name, value)

    def ints(self, values: list[int]) -> str:
        return self.shared("ints_" + "_".join(str(v).replace("-", "m") for v in values),
                           np.asarray(values, dtype=np.int64))

    def scalar(self, value: float) -> str:
        return self.shared(f"scalar_{value!r}", np.asarray(value, dtype=np.float32))

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self._count}", **attrs))
        return out

    def linear(self, x: str, key: str, scale: float = 1.0) -> str:
        """``x @ W.T + b`` for torch's ``Linear`` weights ``key.weight``/``key.bias`` (optionally scaled)."""
        w = self.const(f"{key}.weight_t", (self.weight(f"{key}.weight") * scale).T)
        b = self.const(f"{key}.bias", self.weight(f"{key}.bias") * scale)
        return self.op("Add", self.op("MatMul", x, w), b)

    def layer_norm(self, x: str, key: str) -> str:
        return self.op("LayerNormalization", x, self.const(f"{key}.weight", self.weight(f"{key}.weight")),
                       self.const(f"{key}.bias", self.weight(f"{key}.bias")), axis=-1, epsilon=LN_EPS)

    def model(self, name: str, inputs: list[Any], output: str, output_info: Any) -> Any:
        from onnx import helper, numpy_helper

        for node in self.nodes:  # the node that computes the result writes the tower's output name
            if output in node.output:
                node.output[list(node.output).index(output)] = output_info.name
        graph = helper.make_graph(self.nodes, name, inputs, [output_info],
                                  # each array is freed once copied
                                  initializer=[numpy_helper.from_array(self.initializers.pop(k), k)
                                               for k in list(self.initializers)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="clipseek", producer_version=_version())
        model.ir_version = IR_VERSION
        return model


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clipseek")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _activation(g: _Graph, x: str, quick_gelu: bool) -> str:
    if quick_gelu:  # x * sigmoid(1.702 x)
        return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.scalar(1.702))))
    # exact GELU: 0.5 x (1 + erf(x / sqrt 2))
    erf = g.op("Erf", g.op("Mul", x, g.scalar(float(np.float32(1 / np.sqrt(2))))))
    return g.op("Mul", g.op("Mul", x, g.scalar(0.5)), g.op("Add", erf, g.scalar(1.0)))


def _attention(g: _Graph, q: str, k: str, v: str, heads: int, width: int, mask: str | None) -> str:
    """Multi-head attention over ``[batch, n, width]`` projections (queries already scaled) → ``[batch, m, width]``."""
    head_shape = g.ints([0, 0, heads, width // heads])

    def split(x: str, perm: list[int]) -> str:
        return g.op("Transpose", g.op("Reshape", x, head_shape), perm=perm)

    scores = g.op("MatMul", split(q, [0, 2, 1, 3]), split(k, [0, 2, 3, 1]))  # [b, h, m, n]
    if mask is not None:
        scores = g.op("Add", scores, mask)
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), split(v, [0, 2, 1, 3]))  # [b, h, m, d]
    merged = g.ints([0, 0, width])
    return g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), merged)


def _residual_block(g: _Graph, x: str, prefix: str, width: int, heads: int, quick_gelu: bool,
                    mask: str | None) -> str:
    h = g.layer_norm(x, f"{prefix}.ln_1")
    w = g.weight(f"{prefix}.attn.in_proj_weight")
    b = g.weight(f"{prefix}.attn.in_proj_bias")
    scale = float(width // heads) ** -0.5
    projections = []
    for i, (name, s) in enumerate((("q", scale), ("k", 1.0), ("v", 1.0))):
        wi = g.const(f"{prefix}.attn.{name}_weight_t", (w[i * width:(i + 1) * width] * s).T)
        bi = g.const(f"{prefix}.attn.{name}_bias", b[i * width:(i + 1) * width] * s)
        projections.append(g.op("Add", g.op("MatMul", h, wi), bi))
    q, k, v = projections
    attn = _attention(g, q, k, v, heads=heads, width=width, mask=mask)
    x = g.op("Add", x, g.linear(attn, f"{prefix}.attn.out_proj"))
    h = g.layer_norm(x, f"{prefix}.ln_2")
    h = g.linear(_activation(g, g.linear(h, f"{prefix}.mlp.c_fc"), quick_gelu), f"{prefix}.mlp.c_proj")
    return g.op("Add", x, h)


def text_graph(state: Mapping[str, np.ndarray], spec: ModelSpec) -> Any:
    from onnx import TensorProto, helper

    cfg = spec.tower_config["text_cfg"]
    width, heads, layers = int(cfg["width"]), int(cfg["heads"]), int(cfg["layers"])
    ctx = int(cfg.get("context_length", 77))
    g = _Graph(state)
    ids = TEXT_INPUT
    seq = g.op("Shape", ids, start=1, end=2)  # [1]: this batch's sequence length
    x = g.op("Gather", g.const("token_embedding.weight", g.weight("token_embedding.weight")), ids)
    zero = g.ints([0])
    positions = g.op("Slice", g.const("positional_embedding", g.weight("positional_embedding")), zero, seq, zero)
    x = g.op("Add", x, positions)
    causal = np.triu(np.full((ctx, ctx), -np.inf, dtype=np.float32), k=1)
    mask = g.op("Slice", g.const("causal_mask", causal), g.ints([0, 0]), g.op("Concat", seq, seq, axis=0),
                g.ints([0, 1]))
    for i in range(layers):
        x = _residual_block(g, x, f"transformer.resblocks.{i}", width, heads, spec.quick_gelu, mask)
    x = g.layer_norm(x, "ln_final")
    eot = g.op("ArgMax", ids, axis=1, keepdims=1)  # [b, 1]: the end-of-text token has the highest id
    pooled = g.op("GatherND", x, eot, batch_dims=1)  # [b, width]
    out = g.op("MatMul", pooled, g.const("text_projection", g.weight("text_projection")))
    embed = int(spec.tower_config["embed_dim"])
    return g.model(
        "clipseek_text",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"])],
        out, helper.make_tensor_value_info(TEXT_OUTPUT, TensorProto.FLOAT, ["batch", embed]),
    )


def _vit(g: _Graph, pixels: str, spec: ModelSpec) -> str:
    cfg = spec.tower_config["vision_cfg"]
    width, layers, patch = int(cfg["width"]), int(cfg["layers"]), int(cfg["patch_size"])
    heads = width // int(cfg.get("head_width", 64))
    x = g.op("Conv", pixels, g.const("visual.conv1.weight", g.weight("visual.conv1.weight")),
             kernel_shape=[patch, patch], strides=[patch, patch])  # [b, width, grid, grid]
    x = g.op("Transpose", g.op("Reshape", x, g.ints([0, 0, -1])), perm=[0, 2, 1])  # [b, grid², w]
    batch = g.op("Shape", pixels, start=0, end=1)
    cls = g.const("visual.class_embedding", g.weight("visual.class_embedding").reshape(1, 1, width))
    cls = g.op("Expand", cls, g.op("Concat", batch, g.ints([1, 1]), axis=0))  # [b, 1, w]
    x = g.op("Add", g.op("Concat", cls, x, axis=1),
             g.const("visual.positional_embedding", g.weight("visual.positional_embedding")))
    x = g.layer_norm(x, "visual.ln_pre")
    for i in range(layers):
        x = _residual_block(g, x, f"visual.transformer.resblocks.{i}", width, heads, spec.quick_gelu, None)
    token = g.op("Gather", x, g.const("class_position", np.asarray(0, dtype=np.int64)), axis=1)  # [b, w]
    token = g.layer_norm(token, "visual.ln_post")
    return g.op("MatMul", token, g.const("visual.proj", g.weight("visual.proj")))


def _conv_bn(g: _Graph, x: str, conv: str, bn: str, *, stride: int = 1, relu: bool = True) -> str:
    """A bias-free convolution followed by eval-mode BatchNorm, folded into one convolution."""
    w = g.weight(f"{conv}.weight")
    gamma, beta = g.weight(f"{bn}.weight"), g.weight(f"{bn}.bias")
    mean, var = g.weight(f"{bn}.running_mean"), g.weight(f"{bn}.running_var")
    scale = gamma / np.sqrt(var + BN_EPS)
    k = w.shape[-1]
    y = g.op("Conv", x, g.const(f"{conv}.weight_bn", w * scale[:, None, None, None]),
             g.const(f"{conv}.bias_bn", beta - mean * scale),
             kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
    return g.op("Relu", y) if relu else y


def _avg_pool(g: _Graph, x: str, size: int) -> str:
    return g.op("AveragePool", x, kernel_shape=[size, size], strides=[size, size])


def _modified_resnet(g: _Graph, pixels: str, spec: ModelSpec) -> str:
    cfg = spec.tower_config["vision_cfg"]
    width = int(cfg["width"])
    features = width * 32
    heads = features // int(cfg.get("head_width", 64))
    x = _conv_bn(g, pixels, "visual.conv1", "visual.bn1", stride=2)
    x = _conv_bn(g, x, "visual.conv2", "visual.bn2")
    x = _avg_pool(g, _conv_bn(g, x, "visual.conv3", "visual.bn3"), 2)
    for prefix, inplanes, planes, stride in _resnet_blocks(list(cfg["layers"]), width):
        out = _conv_bn(g, x, f"{prefix}.conv1", f"{prefix}.bn1")
        out = _conv_bn(g, out, f"{prefix}.conv2", f"{prefix}.bn2")
        if stride > 1:
            out = _avg_pool(g, out, stride)
        out = _conv_bn(g, out, f"{prefix}.conv3", f"{prefix}.bn3", relu=False)
        identity = x
        if stride > 1 or inplanes != planes * 4:
            identity = _avg_pool(g, x, stride) if stride > 1 else x
            identity = _conv_bn(g, identity, f"{prefix}.downsample.0", f"{prefix}.downsample.1", relu=False)
        x = g.op("Relu", g.op("Add", out, identity))
    # attention pooling: tokens [b, hw, C]; the mean token first; one query (position 0) over all of them
    x = g.op("Transpose", g.op("Reshape", x, g.ints([0, 0, -1])), perm=[0, 2, 1])
    x = g.op("Concat", g.op("ReduceMean", x, axes=[1], keepdims=1), x, axis=1)
    p = "visual.attnpool"
    x = g.op("Add", x, g.const(f"{p}.positional_embedding", g.weight(f"{p}.positional_embedding")))
    first = g.op("Slice", x, g.ints([0]), g.ints([1]), g.ints([1]))  # [b, 1, C]
    q = g.linear(first, f"{p}.q_proj", scale=float(features // heads) ** -0.5)
    pooled = _attention(g, q, g.linear(x, f"{p}.k_proj"), g.linear(x, f"{p}.v_proj"), heads, features, None)
    pooled = g.op("Reshape", pooled, g.ints([0, features]))  # [b, C]
    return g.linear(pooled, f"{p}.c_proj")


def image_graph(state: Mapping[str, np.ndarray], spec: ModelSpec) -> Any:
    from onnx import TensorProto, helper

    cfg = spec.tower_config["vision_cfg"]
    size, embed = int(cfg["image_size"]), int(spec.tower_config["embed_dim"])
    g = _Graph(state)
    resnet = isinstance(cfg["layers"], (list, tuple))
    out = (_modified_resnet if resnet else _vit)(g, IMAGE_INPUT, spec)
    return g.model(
        "clipseek_image",
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, ["batch", 3, size, size])],
        out, helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.FLOAT, ["batch", embed]),
    )


def build_towers(state: Mapping[str, np.ndarray], spec: ModelSpec, out_dir: Path, *, source: str = "the weights",
                 towers: tuple[str, ...] = ("text", "image")) -> tuple[Path, Path]:
    """Write ``text.onnx`` and ``image.onnx`` for ``spec`` from ``state`` into ``out_dir``.

    Raises :class:`BuildUnsupportedError` for an architecture the builder does not implement and
    :class:`ModelError` naming the keys when ``state`` is not this architecture's weights.
    """
    import onnx

    why = unsupported(spec)
    if why:
        raise BuildUnsupportedError(why)
    state = _full_token_table(state, spec)
    check_state(state, spec, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_path, image_path = out_dir / "text.onnx", out_dir / "image.onnx"
    for tower, make, path in (("text", text_graph, text_path), ("image", image_graph, image_path)):
        if tower in towers:
            onnx.save_model(make(state, spec), str(path))  # one tower's graph in memory at a time
            onnx.checker.check_model(str(path))  # from the file: no second serialised copy in memory
    return text_path, image_path
