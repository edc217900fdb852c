"""An exported model on disk: ``text.onnx``, ``image.onnx`` and ``clipseek.json`` (spec + file checksums).

The same layout serves the cache (``$CLIPSEEK_CACHE/models/<slug>``), the bundled tiny model and
``local-dir:`` folders that air-gapped users copy by hand.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .spec import ModelSpec

MANIFEST = "clipseek.json"
FORMAT = 1
TEXT_FILE, IMAGE_FILE = "text.onnx", "image.onnx"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, spec: ModelSpec, **extra: Any) -> Path:
    """Record the spec and the checksum of every ONNX file in ``folder``."""
    files = {p.name: sha256_file(p) for p in sorted([*folder.glob("*.onnx"), *folder.glob("*.npz")])}
    doc = {"format": FORMAT, "spec": spec.to_dict(), "files": files, **extra}
    path = folder / MANIFEST
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelError(
            f"{folder} is not an exported clipseek model (no {MANIFEST}): export one with "
            "`clipseek models fetch NAME --to DIR` and copy that folder"
        )
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}): re-export the model") from exc
    if doc.get("format", 0) > FORMAT:
        raise ModelError(f"{path} was written by a newer clipseek (format {doc['format']}): upgrade clipseek")
    return doc


def read_model_dir_spec(folder: Path) -> ModelSpec:
    return ModelSpec.from_dict(read_manifest(folder)["spec"])


def is_complete(folder: Path) -> bool:
    """True when the manifest and both towers are there (checksums are verified on load, not here)."""
    return all((folder / name).is_file() for name in (MANIFEST, TEXT_FILE, IMAGE_FILE))


def verify(folder: Path) -> None:
    """Raise when a file differs from the checksum the manifest recorded (a partial copy, a corrupt disk)."""
    for name, expected in read_manifest(folder).get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"{path} is missing: copy the whole model folder again or re-run `clipseek models fetch`")
        if sha256_file(path) != expected:
            raise ModelError(f"{path} does not match its recorded checksum: re-run `clipseek models fetch`")
