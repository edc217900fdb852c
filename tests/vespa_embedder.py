"""Run an exported application package's text embedder the way Vespa's ``hugging-face-embedder`` does.

Everything comes from the package: the component's configuration in ``services.xml`` (model and tokenizer paths,
input/output names, max tokens, pooling, normalisation), the ``tokenizer.json`` through the ``tokenizers``
library (the library Vespa's tokenizer wraps), and the ONNX model, one text at a time without padding.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnxruntime as ort


class PackageEmbedder:
    def __init__(self, package: Path, component_id: str) -> None:
        import tokenizers

        root = ET.parse(package / "services.xml").getroot()
        comp = root.find(f"container/component[@id='{component_id}']")
        assert comp is not None and comp.get("type") == "hugging-face-embedder"
        self.config = {child.tag: (child.get("path") or child.text or "") for child in comp}
        assert self.config["transformer-token-type-ids"] == ""  # configured empty: the model takes none
        self.tokenizer = tokenizers.Tokenizer.from_file(str(package / self.config["tokenizer-model"]))
        self.tokenizer.enable_truncation(int(self.config["max-tokens"]))
        self.session = ort.InferenceSession(str(package / self.config["transformer-model"]))
        self.pooling = self.config["pooling-strategy"]
        self.normalize = self.config.get("normalize") == "true"

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            enc = self.tokenizer.encode(text)
            feeds = {self.config["transformer-input-ids"]: np.array([enc.ids], np.int64),
                     self.config["transformer-attention-mask"]: np.array([enc.attention_mask], np.int64)}
            (hidden,) = self.session.run([self.config["transformer-output"]], feeds)
            assert hidden.ndim == 3 and hidden.shape[0] == 1
            if self.pooling == "cls":
                vec = hidden[0, 0]
            else:
                assert self.pooling == "mean"
                vec = hidden[0].mean(axis=0)
            if self.normalize:
                vec = vec / np.linalg.norm(vec)
            out.append(vec)
        return np.stack(out).astype(np.float32)
