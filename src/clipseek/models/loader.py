"""Find or make a model's exported folder: bundled → ``local-dir:`` → cache → hub download + ONNX build.

Weights are the ``open_clip_model.safetensors`` files open_clip's pretrained table names on the Hugging Face hub
(OpenAI's under ``timm/…``, LAION's and DataComp's under ``laion/…``), downloaded resumably and checked against
the SHA-256 the hub publishes for the file. :mod:`.build` writes both ONNX towers from them with numpy and
``onnx``; a model it does not implement falls back to open_clip + torch (the ``[export]`` extra), which the
training commands use too. The towers are checked on a few fixed inputs and cached. Searching never needs torch.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .. import paths
from ..errors import ExportDependencyError, ModelError, ModelNotAvailableError
from . import modeldir
from .registry import get_spec
from .spec import ModelSpec, parse_ref

Progress = Callable[[str], None]


def model_cache_dir(spec: ModelSpec, cache: Path | None = None) -> Path:
    return (cache or paths.cache_dir()) / "models" / spec.slug


def resolve(name: str, *, cache: Path | None = None, fetch: bool = True, progress: Progress | None = None) -> Path:
    """The folder holding ``name``'s exported towers, fetching and exporting it first if allowed."""
    ref = parse_ref(name)
    if ref.folder is not None:
        modeldir.read_manifest(ref.folder)
        return ref.folder
    spec = get_spec(name)
    if spec.bundled_dir:
        return Path(str(resources.files("clipseek.models").joinpath(spec.bundled_dir)))
    folder = model_cache_dir(spec, cache)
    if modeldir.is_complete(folder):
        return folder
    if not fetch:
        raise ModelNotAvailableError(spec.name, folder, "not fetched yet")
    return fetch_model(spec, cache=cache, progress=progress)


EXPORTERS = ("auto", "builder", "torch")
HF_ENDPOINT_ENV = "HF_ENDPOINT"  # as huggingface_hub reads it: a mirror, or a local server in the tests
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20


def fetch_model(spec: ModelSpec, *, cache: Path | None = None, progress: Progress | None = None,
                weights: Path | None = None, exporter: str = "auto", out: Path | None = None) -> Path:
    """Download ``spec``'s weights (or take ``weights``), write both ONNX towers, check them, cache them atomically.

    ``exporter``: ``builder`` (numpy + onnx), ``torch`` (open_clip's model through torch.onnx), or ``auto`` —
    the builder, and torch for a model the builder does not implement. ``out`` writes the model folder there
    instead of the cache (to copy to another machine and use as ``local-dir:``).
    """
    say = progress or (lambda _msg: None)
    if exporter not in EXPORTERS:
        raise ModelError(f"unknown exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    folder = out or model_cache_dir(spec, cache)
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())) \
            and not (out / modeldir.MANIFEST).is_file():
        raise ModelError(f"{out} exists and is not a clipseek model folder: --to needs a new or empty folder "
                         "(or an earlier --to folder, which is replaced)")
    if weights is None:
        if os.environ.get("CLIPSEEK_OFFLINE"):
            raise ModelNotAvailableError(spec.name, folder, "CLIPSEEK_OFFLINE is set")
        weights = download_weights(spec, (cache or paths.cache_dir()) / "weights", say)
    elif not weights.is_file():
        raise ModelError(f"{weights}: no such weights file (pass the model's open_clip_model.safetensors)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.slug}-", dir=folder.parent))
    try:
        how = write_towers(spec, weights, tmp, exporter, say)
        say("checking the towers on fixed inputs")
        check_towers(tmp, spec)
        modeldir.write_manifest(tmp, spec, weights_sha256=modeldir.sha256_file(weights), exported_by=how)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_towers(spec: ModelSpec, weights: Path, out_dir: Path, exporter: str, say: Progress) -> str:
    """Write ``text.onnx`` and ``image.onnx`` from ``weights``; returns which exporter did (builder or torch)."""
    from .build import BuildUnsupportedError, build_towers, read_weights

    if exporter != "torch":
        try:
            say(f"building {spec.name}'s ONNX towers from {weights.name} (numpy + onnx)")
            build_towers(read_weights(weights), spec, out_dir, source=str(weights))
            return "builder"
        except BuildUnsupportedError as exc:
            if exporter == "builder":
                raise
            if not torch_installed():
                raise ExportDependencyError(spec.name, f"torch and open_clip ({exc})") from exc
            say(f"{exc}: exporting with torch instead")
    clip = _load_open_clip(spec, weights)
    say(f"exporting {spec.name} to ONNX with torch")
    from .export import export_towers

    export_towers(clip, out_dir, image_size=spec.image_size, context_length=spec.context_length)
    return "torch"


def torch_installed() -> bool:
    """Whether the ``[export]`` extra is there, without importing it (open_clip takes seconds to import)."""
    import importlib.util

    for name in ("torch", "open_clip"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ValueError, ImportError):
            return False
    return True


CHECK_CAPTIONS = ["a photo of a dog running on a beach", "a diagram", ""]


def check_towers(folder: Path, spec: ModelSpec) -> None:
    """Run both towers on fixed inputs: the right shapes, finite, not all zero or all alike, and a text batch cut at
    its longest end-of-text token equal to the full 77 tokens (the causal mask). Raises a ModelError naming the
    tower. (Whether the vectors are *good* is `clipseek models check`'s and `clipseek evaluate`'s question.)"""
    import numpy as np
    import onnxruntime as ort

    from ..tokenizer import get_tokenizer

    def run(tower: str, name: str, x: Any) -> Any:
        session = ort.InferenceSession(str(folder / f"{tower}.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {name: x})[0]

    tokens = get_tokenizer()(CHECK_CAPTIONS, context_length=spec.context_length)
    ramp = np.linspace(0.0, 1.0, spec.image_size, dtype=np.float32)
    images = np.stack([np.stack([ramp[None, :].repeat(spec.image_size, 0)] * 3),
                       np.stack([ramp[:, None].repeat(spec.image_size, 1), 1 - ramp[:, None].repeat(spec.image_size, 1),
                                 np.full((spec.image_size, spec.image_size), 0.5, dtype=np.float32)]),
                       np.zeros((3, spec.image_size, spec.image_size), dtype=np.float32)])
    mean, std = np.asarray(spec.mean, np.float32)[:, None, None], np.asarray(spec.std, np.float32)[:, None, None]
    pixels = ((images - mean) / std).astype(np.float32)
    cut = int((tokens != 0).sum(axis=1).max())
    outputs = {"text": run("text", "input_ids", tokens), "image": run("image", "pixel_values", pixels)}
    short = run("text", "input_ids", np.ascontiguousarray(tokens[:, :cut]))
    for tower, vectors in outputs.items():
        where = f"{spec.name}'s {tower} tower ({tower}.onnx)"
        if vectors.shape != (3, spec.embed_dim):
            raise ModelError(f"{where} gives vectors of shape {vectors.shape}, expected (3, {spec.embed_dim})")
        if not np.isfinite(vectors).all():
            raise ModelError(f"{where} gives NaN or infinite values on fixed inputs: the weights file is damaged; "
                             "delete it and fetch again")
        if not np.linalg.norm(vectors, axis=1).all() or not np.ptp(vectors, axis=0).any():
            raise ModelError(f"{where} gives a zero vector, or the same vector for different inputs: the weights are "
                             "degenerate; delete the weights file and fetch again")
    cos = (short * outputs["text"]).sum(1) / (np.linalg.norm(short, axis=1) * np.linalg.norm(outputs["text"], axis=1))
    if cos.min() < 0.9999:
        raise ModelError(f"{spec.name}'s text tower changes its output when padding is cut (cos {cos.min():.5f}): "
                         "its attention is not causal, so clipseek's early exit would be wrong")


def export_model(clip: Any, spec: ModelSpec, out_dir: Path, **manifest_extra: Any) -> Path:
    """Export a torch CLIP with ``spec``'s geometry into ``out_dir`` and write its manifest."""
    from .export import export_towers

    export_towers(clip, out_dir, image_size=spec.image_size, context_length=spec.context_length)
    modeldir.write_manifest(out_dir, spec, **manifest_extra)
    return out_dir


def download_weights(spec: ModelSpec, weights_dir: Path, say: Progress) -> Path:
    """``spec``'s weights file from the hub into ``weights_dir/<slug>``: resumed where a run stopped, checked."""
    weights = spec.weights
    folder = weights_dir / spec.slug
    if "hf_hub" not in weights:
        raise ModelError(f"model {spec.name} has no weights source in the registry")
    try:
        return download_hf(str(weights["hf_hub"]), str(weights["filename"]), folder, say=say,
                           revision=str(weights.get("revision", "main")), sha256=weights.get("sha256"))
    except ModelError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise ModelNotAvailableError(spec.name, folder, f"download failed: {exc}") from exc


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> urllib.request.Request:
    head = {"User-Agent": "clipseek", "Accept-Encoding": "identity", **(headers or {})}
    token = os.environ.get("HF_TOKEN")
    if token:
        head["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, method=method, headers=head)


def hub_file_metadata(url: str) -> tuple[str | None, int | None]:
    """The SHA-256 and size the hub publishes for a file: ``X-Linked-Etag``/``X-Linked-Size`` on the resolve URL's
    redirect for large (LFS/Xet) files, as huggingface_hub reads them; None where the hub gives none."""
    try:
        response = urllib.request.build_opener(_NoRedirect).open(_request(url, "HEAD"), timeout=30)
        headers = response.headers
    except urllib.error.HTTPError as exc:
        if not 300 <= exc.code < 400:
            raise
        headers = exc.headers
    etag = (headers.get("X-Linked-Etag") or "").strip().removeprefix("W/").strip('"')
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    sha = etag.lower() if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag.lower()) else None
    return sha, int(size) if size and size.isdigit() else None


def download_hf(repo: str, filename: str, folder: Path, *, say: Progress, revision: str = "main",
                sha256: str | None = None) -> Path:
    """Download ``filename`` of hub repo ``repo`` into ``folder``: resumable (``<file>.part`` and a Range request),
    with a progress bar, kept only when its SHA-256 is the registry's or, failing that, the hub's."""
    endpoint = os.environ.get(HF_ENDPOINT_ENV, DEFAULT_HF_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{repo}/resolve/{urllib.parse.quote(revision)}/{urllib.parse.quote(filename)}"
    target = folder / filename
    if target.is_file():  # renamed into place only after its checksum matched
        return target
    published, size = hub_file_metadata(url)
    expected = sha256 or published
    whose = "the registry records" if sha256 else "the hub publishes"
    if expected is None:
        raise ModelError(f"{url}: the hub publishes no SHA-256 for this file, so a download could not be verified; "
                         "download it yourself, check it, and pass it with `clipseek models fetch NAME --weights FILE`")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (filename + ".part")
    _download_resumable(url, partial, size, say)
    got = modeldir.sha256_file(partial)
    if got != expected:
        partial.unlink()
        raise ModelError(f"{url} downloaded with SHA-256 {got}, but {whose} {expected}: the download was "
                         "deleted; run the command again to download it anew")
    partial.replace(target)
    return target


def _download_resumable(url: str, partial: Path, size: int | None, say: Progress) -> None:
    from tqdm import tqdm

    offset = partial.stat().st_size if partial.is_file() else 0
    if size is not None and offset > size:
        partial.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    say(f"downloading {url}" + (f" (resuming at {offset / 1e6:.1f} MB)" if offset else ""))
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with urllib.request.urlopen(_request(url, headers=headers), timeout=60) as response:
            if offset and response.status != 206:  # the server ignored the range: start over
                offset = 0
            with open(partial, "ab" if offset else "wb") as out, \
                    tqdm(total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=partial.name.removesuffix(".part"), disable=None, dynamic_ncols=True) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        have = partial.stat().st_size if partial.is_file() else 0
        raise ModelError(f"download of {url} stopped after {have / 1e6:.1f} MB ({exc}): run the same command again "
                         "to resume it") from exc
    have = partial.stat().st_size
    if size is not None and have < size:
        raise ModelError(f"download of {url} stopped after {have / 1e6:.1f} of {size / 1e6:.1f} MB (the connection "
                         "closed early): run the same command again to resume it")


def _load_open_clip(spec: ModelSpec, weights: Path) -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ExportDependencyError(spec.name, "torch and open_clip") from exc
    return open_clip.create_model(spec.arch, pretrained=str(weights), force_quick_gelu=spec.quick_gelu)
