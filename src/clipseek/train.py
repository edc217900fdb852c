"""Contrastive training of CLIP-architecture models (open_clip's classes), starting with the bundled ``tiny``.

The pieces — a dataset of (image, caption) pairs, a model config, the loop, the export — are separate so
that fine-tuning a real CLIP on a user's pairs reuses them. Images go through clipseek's own preprocessing
and captions through its own tokenizer, so the trained model sees exactly what the search pipeline feeds it.
Needs the ``[export]`` extra (torch + open_clip).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import synth
from .models.build import COMPACT_TOKEN_IDS
from .models.registry import get_spec
from .models.spec import ModelSpec
from .tokenizer import get_tokenizer
from .transforms import preprocess

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (the tiny model's defaults are what shipped)."""

    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    pool_size: int = 24_000  # rendered training images, reused with fresh captions each epoch
    threads: int = 2


@dataclass
class PairDataset:
    """Preprocessed images ``[n, 3, s, s]`` (float32) and, per image, its captions."""

    pixels: np.ndarray
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.captions)


def synth_dataset(spec: ModelSpec, n: int, seed: int, log: Log | None = None) -> PairDataset:
    """Render ``n`` random synth scenes (repeats allowed, fresh jitter) through the product's preprocessing."""
    rng = random.Random(seed)
    scenes = synth.all_scenes()
    pixels = np.zeros((n, 3, spec.image_size, spec.image_size), dtype=np.float32)
    caps: list[list[str]] = []
    for i in range(n):
        scene = rng.choice(scenes)
        img = synth.render(scene, rng)
        pixels[i] = preprocess(img, spec.image_size, spec.mean, spec.std, spec.interpolation)
        caps.append(synth.captions(scene, rng))
        if log and (i + 1) % 5000 == 0:
            log(f"rendered {i + 1}/{n} training images")
    return PairDataset(pixels, caps)


def create_model(spec: ModelSpec) -> Any:
    """An open_clip CLIP for ``spec`` at random init; clipseek's own configs are registered first."""
    import open_clip

    open_clip.add_model_config(Path(str(resources.files("clipseek.models").joinpath("train_configs"))))
    return open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=spec.quick_gelu)


def clip_loss(image: Any, text: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE over the batch with a learned temperature (CLIP's loss)."""
    import torch
    import torch.nn.functional as F

    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * image @ text.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train(model: Any, data: PairDataset, config: TrainConfig, log: Log | None = None) -> Any:
    """Train ``model`` contrastively on ``data``; one random caption per image per step."""
    import torch

    from .models.export import text_tower

    say = log or (lambda _m: None)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    encode_text = text_tower(model)  # the exported forward: runs on sequences cut at end-of-text
    rng = np.random.default_rng(config.seed)
    tokenizer = get_tokenizer()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    started = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.choice(len(data), size=config.batch_size, replace=False)
        texts = [data.captions[i][rng.integers(len(data.captions[i]))] for i in idx]
        tokens = tokenizer(texts)
        tokens = tokens[:, : int(tokenizer.lengths(tokens).max())]  # exact for a causal text tower
        images = torch.from_numpy(data.pixels[idx])
        image_features = model.encode_image(images)
        text_features = encode_text(torch.from_numpy(tokens))
        loss = clip_loss(image_features, text_features, model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == config.steps - 1:
            say(f"step {step + 1}/{config.steps} loss {loss.item():.3f} "
                f"temp {1 / model.logit_scale.exp().item():.4f} {time.perf_counter() - started:.0f}s")
    return model.eval()


def used_token_ids(texts: Sequence[str]) -> set[int]:
    tokenizer = get_tokenizer()
    ids = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    for text in texts:
        ids.update(tokenizer.encode(text))
    return ids


def compact_token_embedding(model: Any, keep: set[int]) -> None:
    """Keep only the embedding rows of tokens training saw; every other id maps to a zero row.

    Unseen rows carry no learned meaning, and dropping them shrinks the tiny text tower from ~19 MB to ~1 MB.
    The module computes ``table[remap[ids]]``, so the export path and the ONNX contract stay the same.
    """
    import torch

    weight = model.token_embedding.weight.detach()
    ids = torch.tensor(sorted(keep), dtype=torch.long)
    remap = torch.zeros(weight.shape[0], dtype=torch.long)
    remap[ids] = torch.arange(1, len(ids) + 1)
    table = torch.cat([torch.zeros(1, weight.shape[1]), weight[ids]])

    class CompactEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("remap", remap)
            self.table = torch.nn.Parameter(table, requires_grad=False)

        def forward(self, input_ids: Any) -> Any:
            remap: torch.Tensor = self.get_buffer("remap")
            return self.table[remap[input_ids]]

    model.token_embedding = CompactEmbedding()


WEIGHTS_FILE = "weights.npz"
TOKEN_IDS = COMPACT_TOKEN_IDS


def save_weights(model: Any, path: Path, token_ids: set[int] | None = None) -> Path:
    """Every parameter and buffer of an open_clip CLIP as ``.npz`` (numpy arrays, no pickle).

    With ``token_ids``, only those rows of the token embedding are kept (with their ids): the other rows carry
    no training, and :func:`load_weights` restores them as zeros — what the exported text tower computes.
    """
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if token_ids is not None:
        ids = np.array(sorted(token_ids), dtype=np.int64)
        state["token_embedding.weight"] = state["token_embedding.weight"][ids]
        state[TOKEN_IDS] = ids
    with open(path, "wb") as fh:
        np.savez(fh, **state)
    return path


def load_weights(spec: ModelSpec, path: Path) -> Any:
    """An open_clip CLIP for ``spec`` with the weights :func:`save_weights` wrote; the full token table."""
    import torch

    model = create_model(spec)
    with np.load(path) as data:
        state = {k: torch.from_numpy(data[k]) for k in data.files if k != TOKEN_IDS}
        if TOKEN_IDS in data.files:
            full = torch.zeros_like(model.token_embedding.weight)
            full[torch.from_numpy(data[TOKEN_IDS])] = state["token_embedding.weight"]
            state["token_embedding.weight"] = full
    model.load_state_dict(state)
    return model.eval()


def train_tiny(out_dir: Path, config: TrainConfig = TrainConfig(), log: Log | None = None) -> Path:
    """The one reproducible command behind the bundled ``tiny`` model: render, train, export."""
    from .models.loader import export_model

    say = log or (lambda _m: None)
    spec = get_spec("tiny")
    random.seed(config.seed)
    started = time.perf_counter()
    data = synth_dataset(spec, config.pool_size, config.seed, say)
    import torch

    torch.manual_seed(config.seed)
    model = create_model(spec)
    train(model, data, config, say)
    seen = used_token_ids([c for caps in data.captions for c in caps])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, out_dir / WEIGHTS_FILE, seen)  # what `clipseek finetune --model tiny` starts from
    compact_token_embedding(model, seen)
    minutes = (time.perf_counter() - started) / 60
    export_model(model, spec, out_dir, trained={
        "data": f"clipseek synth scenes, {config.pool_size} renders, seed {config.seed}",
        "config": config.__dict__, "wall_minutes": round(minutes, 1),
    })
    say(f"exported to {out_dir} after {minutes:.1f} min")
    return out_dir
