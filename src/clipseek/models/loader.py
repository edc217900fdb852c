"""Find or make a model's exported folder: bundled → ``local-dir:`` → cache → hub download + ONNX export.

Weights come from the sources open_clip's pretrained registry names (OpenAI's CDN with the SHA-256 in the URL,
or the Hugging Face hub for LAION/DataComp weights), are checked, loaded into open_clip's model, exported once
(text and image towers separately) and cached. Searching never needs torch; fetching does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .. import paths
from ..errors import ExportDependencyError, ModelError, ModelNotAvailableError
from . import modeldir
from .registry import LOCAL_DIR_PREFIX, ModelSpec, get_spec

Progress = Callable[[str], None]


def model_cache_dir(spec: ModelSpec, cache: Path | None = None) -> Path:
    return (cache or paths.cache_dir()) / "models" / spec.slug


def resolve(name: str, *, cache: Path | None = None, fetch: bool = True, progress: Progress | None = None) -> Path:
    """The folder holding ``name``'s exported towers, fetching and exporting it first if allowed."""
    if name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(name[len(LOCAL_DIR_PREFIX):]).expanduser()
        modeldir.read_manifest(folder)
        return folder
    spec = get_spec(name)
    if spec.bundled_dir:
        return Path(str(resources.files("clipseek.models").joinpath(spec.bundled_dir)))
    folder = model_cache_dir(spec, cache)
    if modeldir.is_complete(folder):
        return folder
    if not fetch:
        raise ModelNotAvailableError(spec.name, folder, "not fetched yet")
    return fetch_model(spec, cache=cache, progress=progress)


def fetch_model(spec: ModelSpec, *, cache: Path | None = None, progress: Progress | None = None) -> Path:
    """Download ``spec``'s weights, verify them, export both towers to ONNX into the cache, atomically."""
    say = progress or (lambda _msg: None)
    folder = model_cache_dir(spec, cache)
    weights_dir = (cache or paths.cache_dir()) / "weights"
    if os.environ.get("CLIPSEEK_OFFLINE"):
        raise ModelNotAvailableError(spec.name, folder, "CLIPSEEK_OFFLINE is set")
    weights = download_weights(spec, weights_dir, say)
    clip = _load_open_clip(spec, weights)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.slug}-", dir=folder.parent))
    try:
        say(f"exporting {spec.name} to ONNX")
        export_model(clip, spec, tmp, weights_sha256=modeldir.sha256_file(weights))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_model(clip: Any, spec: ModelSpec, out_dir: Path, **manifest_extra: Any) -> Path:
    """Export a torch CLIP with ``spec``'s geometry into ``out_dir`` and write its manifest."""
    from .export import export_towers

    export_towers(clip, out_dir, image_size=spec.image_size, context_length=spec.context_length)
    modeldir.write_manifest(out_dir, spec, **manifest_extra)
    return out_dir


def download_weights(spec: ModelSpec, weights_dir: Path, say: Progress) -> Path:
    weights = spec.weights
    folder = weights_dir / spec.slug
    try:
        if "url" in weights:
            return _download_url(spec, str(weights["url"]), weights.get("sha256"), folder, say)
        if "hf_hub" in weights:
            return _download_hf(spec, str(weights["hf_hub"]), str(weights["filename"]), folder, say)
    except ModelError:
        raise
    except OSError as exc:
        raise ModelNotAvailableError(spec.name, folder, f"download failed: {exc}") from exc
    raise ModelError(f"model {spec.name} has no weights source in the registry")


def _download_url(spec: ModelSpec, url: str, sha256: str | None, folder: Path, say: Progress) -> Path:
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file() and (not sha256 or modeldir.sha256_file(target) == sha256):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    say(f"downloading {url}")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    if sha256 and digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{url} downloaded with SHA-256 {digest.hexdigest()}, expected {sha256}: try again later")
    partial.rename(target)
    return target


def _download_hf(spec: ModelSpec, repo: str, filename: str, folder: Path, say: Progress) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ExportDependencyError(spec.name, "huggingface_hub") from exc
    say(f"downloading hf-hub:{repo}/{filename}")
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=str(folder)))
    except Exception as exc:  # the hub raises many types for "offline"
        raise ModelNotAvailableError(spec.name, folder, f"hub download failed: {exc}") from exc


def _load_open_clip(spec: ModelSpec, weights: Path) -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ExportDependencyError(spec.name, "torch and open_clip") from exc
    return open_clip.create_model(spec.arch, pretrained=str(weights), force_quick_gelu=spec.quick_gelu)
