"""Write ``src/clipseek/models/tiny/weights.npz``: the bundled tiny model's torch weights, read back from its ONNX.

The tiny model was trained and exported before clipseek shipped torch weights for it. Every weight its two ONNX
towers compute with is an initializer of those files (the MatMul ones transposed, as the exporter stores
``x @ W.T``), so they are read back exactly; the check at the end runs both towers against open_clip's forward.
The one parameter no tower holds is the learned temperature: it is recovered as the value that minimises the
training loss (CLIP's contrastive loss, batches of 256 fresh synth scenes as in training) of the shipped
embeddings, which is where a learned temperature settles. ``make tiny-model`` writes weights.npz itself from
now on (``clipseek.train.train_tiny``).

    .venv/bin/python scripts/tiny_weights_from_onnx.py
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from clipseek.models import load_model
from clipseek.models.export import text_tower
from clipseek.models.registry import get_spec
from clipseek.train import WEIGHTS_FILE, create_model, save_weights, synth_dataset

BLOCK = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def read_back(folder: Path) -> tuple[dict[str, np.ndarray], set[int]]:
    state: dict[str, np.ndarray] = {}
    kept: set[int] = set()
    for tower, prefix in (("text", ""), ("image", "visual.")):
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(folder / f"{tower}.onnx").graph.initializer}
        mats = [k for k in inits if k.startswith("onnx::MatMul")]  # in graph order: block by block
        for i, name in enumerate(mats):
            state[f"{prefix}transformer.resblocks.{i // 4}.{BLOCK[i % 4]}"] = inits[name].T
        for name, value in inits.items():
            if not name.startswith(("onnx::", "token_embedding")):
                state[prefix + name] = value
        if tower == "text":
            remap, table = inits["token_embedding.remap"], inits["token_embedding.table"]
            ids = np.nonzero(remap)[0]
            full = np.zeros((len(remap), table.shape[1]), np.float32)
            full[ids] = table[remap[ids]]
            state["token_embedding.weight"] = full
            kept = set(ids.tolist())
        else:
            others = [k for k in inits if k.startswith(("onnx::Expand", "onnx::Add"))]
            state["visual.class_embedding"] = inits[others[0]].reshape(-1)
            state["visual.positional_embedding"] = inits[others[1]]
    return state, kept


def main() -> None:
    spec = get_spec("tiny")
    folder = Path(str(resources.files("clipseek.models").joinpath("tiny")))
    model = create_model(spec)
    want = model.state_dict()
    state, kept = read_back(folder)
    state["logit_scale"] = np.array(0.0, np.float32)
    assert set(state) == set(want), (set(want) ^ set(state))
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)).reshape(want[k].shape) for k, v in state.items()})
    model.eval()

    encoder = load_model("tiny")
    data = synth_dataset(spec, 4096, seed=0)
    captions = [c[0] for c in data.captions]
    tokens = encoder.tokenizer(captions)
    tokens = tokens[:, : int(encoder.tokenizer.lengths(tokens).max())]
    with torch.no_grad():
        text = torch.nn.functional.normalize(text_tower(model)(torch.from_numpy(tokens)), dim=-1)
        image = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(data.pixels)), dim=-1)
    worst = min(float(np.min(np.sum(encoder.embed_texts(captions) * text.numpy(), 1))),
                float(np.min(np.sum(encoder.embed_pixels(data.pixels) * image.numpy(), 1))))
    assert worst > 0.99999, worst

    def loss(scale: float) -> float:
        total = 0.0
        for i in range(0, 4096, 256):
            logits = scale * text[i:i + 256] @ image[i:i + 256].T
            labels = torch.arange(len(logits))
            total += float(torch.nn.functional.cross_entropy(logits, labels)
                           + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        return total / 16

    grid = np.linspace(math.log(1.0), math.log(100.0), 400)
    best = float(grid[int(np.argmin([loss(math.exp(g)) for g in grid]))])
    model.logit_scale.data.fill_(best)
    save_weights(model, folder / WEIGHTS_FILE, kept)
    print(f"worst cosine ONNX vs torch {worst:.7f}; temperature {math.exp(-best):.4f}; wrote {folder / WEIGHTS_FILE}")


if __name__ == "__main__":
    main()
