"""The native JSON API (for the page and scripts): text, image upload, more-like-this and weighted queries,
filters, thumbnails and originals — of files ``clipseek index`` indexed, still as indexed, under the folders it
indexed (:mod:`clipseek.originals`). Errors: ``{"error": {"status", "type", "message"}}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..collection import MAX_HITS, Collection, Document, Filter, check_docid
from ..duplicates import collapse as collapse_hits
from ..errors import ClipseekError, QueryError, TooLargeError
from ..models.encoder import Encoder, l2_normalize
from ..models.fields import field_for
from ..originals import open_original
from ..transforms import open_image
from .bodies import is_json, loads_json, read_body
from .openapi import SPEC
from .rendering import api_error
from .state import Shared, default_model, encoder_for, shared_of

MAX_UPLOAD = 20 * 1024 * 1024
THUMB_SIZES = (128, 256, 512)


def _number(value: Any, name: str, kind: type = float) -> Any:
    if value is None or value == "":
        return None
    try:
        number = kind(value) if not isinstance(value, (bool, list, dict)) else None
        if number is not None and math.isfinite(number) and -2 ** 63 <= number < 2 ** 63:
            return number
    except (TypeError, ValueError, OverflowError):
        pass
    raise QueryError(f"{name} must be a {'whole number' if kind is int else 'number'}, got {value!r}")


def _flag(value: Any, name: str) -> bool:
    """A yes/no parameter: true/false, 1/0, or absent (no)."""
    if value is None or value is False or value in ("", "0", "false", "False"):
        return False
    if value is True or value in ("1", "true", "True"):
        return True
    raise QueryError(f"{name} must be true or false, got {str(value)[:40]!r}")


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value is None or value == "":
        return allowed[0]
    if value not in allowed:
        raise QueryError(f"{name} must be one of {', '.join(allowed)}, got {str(value)[:40]!r}")
    return str(value)


def _near(value: Any) -> tuple[float, float, float] | None:
    """``near``: "LAT,LON,KM" or [lat, lon, km]."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(parts, list) or len(parts) != 3 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        lat, lon, km = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise QueryError(f"near must be LAT,LON,KM (e.g. 48.85,2.35,10), got {str(value)[:60]!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 <= km <= 20_100):
        raise QueryError(f"near: latitude -90..90, longitude -180..180, km 0..20100, got {lat}, {lon}, {km}")
    return lat, lon, km


def _text(value: Any, name: str) -> str | None:
    """A string parameter of a JSON body (numbers are taken as their text); None when absent."""
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise QueryError(f"{name} must be a string, got {value!r}")



def pick_field(request: Request, coll: Collection, model: str | None) -> tuple[str, str]:
    """(field, the model that encodes the query): :func:`clipseek.models.fields.field_for`'s decision."""
    choice = field_for(coll.fields, model, default=default_model(request))
    return choice.field.name, choice.encoder

def filters(params: dict[str, Any]) -> Filter:
    formats = params.get("format")
    if isinstance(formats, list) and all(isinstance(f, str) for f in formats):
        formats = ",".join(formats)
    formats = [f for f in (_text(formats, "format (e.g. \"JPEG,PNG\")") or "").split(",") if f]
    cameras = params.get("camera")
    if isinstance(cameras, list) and all(isinstance(c, str) for c in cameras):
        cameras = "\n".join(cameras)
    cameras = [c for c in (_text(cameras, "camera (one name, or a list)") or "").split("\n") if c.strip()]
    return Filter(folder=_text(params.get("folder"), "folder") or None, formats=formats or None,
                  taken_from=_number(params.get("since"), "since"), taken_to=_number(params.get("until"), "until"),
                  min_width=_number(params.get("min_width"), "min_width", int),
                  min_height=_number(params.get("min_height"), "min_height", int),
                  cameras=cameras or None, near=_near(params.get("near")))

def run(request: Request, coll: Collection, field: str, model: str, vector: np.ndarray,
        params: dict[str, Any], query: Any) -> dict[str, Any]:
    k = _number(params.get("k", 24), "k", int)
    offset = _number(params.get("offset", 0), "offset", int)
    threshold = _number(params.get("threshold"), "threshold")
    if k is None or k < 1 or offset is None or offset < 0:
        raise QueryError("k must be >= 1 and offset >= 0")
    k = min(k, MAX_HITS)
    started = time.perf_counter()
    collapse = _flag(params.get("collapse"), "collapse")
    by_date = _choice(params.get("sort"), "sort", ("relevance", "date")) == "date"
    wanted = MAX_HITS if by_date else min(k * 3, MAX_HITS) if collapse else k
    res = coll.search(vector, field=field, hits=wanted, offset=0 if by_date else min(offset, 1000),
                      filter=filters(params), model=encoder_for(request)(model).image_ref)
    hits = [h for h in res.hits if threshold is None or h.shown_relevance() >= threshold]
    if by_date:  # the relevant ones (above the threshold), newest first
        hits.sort(key=lambda h: -(h.fields.get("taken") or float("-inf")))
    if collapse:  # one hit per group of near-duplicates; only files the server would serve are read
        roots = coll.indexed_roots()  # once per request, not once per hit
        hits = collapse_hits(hits, coll, read=lambda doc: served_bytes(doc, roots))
    hits = hits[offset: offset + k] if by_date else hits[:k]
    return {"query": query, "model": model, "field": field, "total": res.total_count, "documents": res.documents,
            "took_ms": round((time.perf_counter() - started) * 1000, 2), "hits": [
                {"id": h.docid, "relevance": h.shown_relevance(), **h.fields,
                 "url": f"/api/images/{h.docid}", "thumbnail": f"/api/thumbnails/{h.docid}"} for h in hits]}

def combine(request: Request, coll: Collection, field: str, model: str, terms: list[Any],
            uploads: list[bytes]) -> np.ndarray:
    """Σ weight · vector over text, indexed-image and uploaded-image terms, then normalised."""
    encoder = encoder_for(request)(model)
    total = np.zeros(coll.fields[field].dim, dtype=np.float32)
    for term in terms:
        if not isinstance(term, dict):
            raise QueryError("each term is an object: {\"text\": ...} or {\"id\": ...}, with optional weight")
        weight = _number(term.get("weight", 1.0), "weight")
        if weight is None or not -100 <= weight <= 100:
            raise QueryError(f"weight must be a number between -100 and 100, got {term.get('weight')!r}")
        text, docid = _text(term.get("text"), "a term's text"), _text(term.get("id"), "a term's id")
        if text is not None and text.strip():
            total += weight * encoder.embed_texts([text])[0]
        elif docid is not None:
            doc = coll.get(docid)
            if doc is None or field not in doc.vectors:
                raise QueryError(f"no indexed image with id {term['id']!r} (and vectors of {model})")
            total += weight * l2_normalize(doc.vectors[field])
        else:
            raise QueryError("a term needs a non-empty 'text' or an 'id'")
    for data in uploads:
        total += image_vector(encoder, data)
    if not np.any(total):
        raise QueryError("the query is empty: give text, an image or an id")
    return l2_normalize(total)

def image_vector(encoder: Encoder, data: bytes) -> np.ndarray:
    if len(data) > MAX_UPLOAD:
        raise QueryError(f"upload of {len(data)} bytes is over the {MAX_UPLOAD} byte limit")
    img, _ = encoder.load(io.BytesIO(data), name="upload")
    vec: np.ndarray = encoder.embed_pixels(encoder.preprocess_image(img)[None])[0]
    return vec

async def guarded(fn: Callable[[], Any]) -> Response:
    try:
        return JSONResponse(await asyncio.to_thread(fn))
    except TooLargeError as exc:
        return api_error(413, exc)
    except QueryError as exc:
        return api_error(400, exc)
    except ClipseekError as exc:
        return api_error(400, exc)

async def search_get(request: Request) -> Response:
    params = dict(request.query_params)

    def go() -> dict[str, Any]:
        terms: list[Any] = []
        if params.get("q"):
            terms.append({"text": params["q"]})
        if params.get("like"):
            terms.append({"id": params["like"]})
        if params.get("not"):
            terms.append({"text": params["not"], "weight": -0.5})
        with shared_of(request).reading() as coll:
            field, model = pick_field(request, coll, _text(params.get("model"), "model"))
            vector = combine(request, coll, field, model, terms, [])
            return run(request, coll, field, model, vector, params, params.get("q") or params.get("like"))
    return await guarded(go)

async def search_post(request: Request) -> Response:
    ctype = request.headers.get("content-type", "")
    uploads: list[bytes] = []
    params: dict[str, Any] = dict(request.query_params)
    terms: list[Any] = []
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_part_size=MAX_UPLOAD, max_files=8, max_fields=100)
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    uploads.append(await value.read())
                elif key == "q" and value:
                    terms.append({"text": value})
                elif key == "not" and value:
                    terms.append({"text": value, "weight": -0.5})
                else:
                    params[key] = value
        elif is_json(request):
            body = loads_json(await read_body(request))
            if not isinstance(body, dict):
                raise QueryError("the JSON body must be an object")
            terms = body.get("terms") or []
            if not isinstance(terms, list):
                raise QueryError(f"terms must be a list of objects like {{\"text\": \"a dog\"}}, got {terms!r}")
            terms = list(terms)
            if q := _text(body.get("q"), "q"):
                terms.append({"text": q})
            params.update({k: v for k, v in body.items() if k not in ("terms", "q")})
        else:
            uploads.append(await read_body(request, MAX_UPLOAD))
    except TooLargeError as exc:
        return api_error(413, exc)
    except (ValueError, QueryError) as exc:
        return api_error(400, exc, "QueryError")

    def go() -> dict[str, Any]:
        with shared_of(request).reading() as coll:
            field, model = pick_field(request, coll, _text(params.get("model"), "model"))
            vector = combine(request, coll, field, model, terms, uploads)
            return run(request, coll, field, model, vector, params, terms or "image upload")
    return await guarded(go)

def served_bytes(doc: Document, roots: list[bytes]) -> bytes | None:
    found = open_original(doc.extra, roots)
    if found is None:
        return None
    fd, st = found
    with os.fdopen(fd, "rb") as fh:  # closes the descriptor
        return fh.read() if st.st_size <= 512 * 1024 * 1024 else None

def original_file(served: Shared, docid: str) -> tuple[int, os.stat_result] | None:
    """An open descriptor of an indexed document's file, checked as :mod:`clipseek.originals` says, and its
    stat; None if it is not served. The caller closes the descriptor."""
    try:
        check_docid(docid)
    except QueryError:
        return None
    with served.reading() as coll:
        doc = coll.get(docid, with_vectors=False)
        return open_original(doc.extra, coll.indexed_roots()) if doc is not None else None

async def original(request: Request) -> Response:
    found = await asyncio.to_thread(original_file, shared_of(request), request.path_params["docid"])
    if found is None:
        return api_error(404, "no indexed image with that id (or its file changed since it was indexed: "
                          "run `clipseek index` again)", "NotFound")
    fd, st = found
    return StreamingResponse(_chunks(fd), media_type=_media_type(fd),
                             headers={"Content-Length": str(st.st_size), "Cache-Control": "no-cache"})

async def thumbnail(request: Request) -> Response:
    docid = request.path_params["docid"]
    text = request.query_params.get("size", "256")
    size = int(text) if text.isascii() and text.isdigit() and len(text) < 6 else None
    if size not in THUMB_SIZES:
        return api_error(400, f"size must be one of {', '.join(map(str, THUMB_SIZES))}", "QueryError")

    served = shared_of(request)

    def make() -> Path | None:
        found = original_file(served, docid)
        if found is None:
            return None
        fd, st = found
        with os.fdopen(fd, "rb") as fh:  # closes the descriptor
            folder = served.path / "thumbnails"
            target = folder / f"{hashlib.sha256(docid.encode('utf-8')).hexdigest()[:32]}-{size}.jpg"
            if not target.exists() or target.stat().st_mtime_ns < st.st_mtime_ns:
                img, _ = open_image(fh, draft_size=size, name=docid)
                img.thumbnail((size, size), Image.Resampling.LANCZOS)
                folder.mkdir(exist_ok=True)
                tmp = target.with_suffix(f".{os.getpid()}.{id(img)}.tmp")
                img.save(tmp, "JPEG", quality=85)
                os.replace(tmp, target)
        return target
    try:
        target = await asyncio.to_thread(make)
    except ClipseekError as exc:
        return api_error(422, exc)
    if target is None:
        return api_error(404, "no indexed image with that id", "NotFound")
    return FileResponse(target, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

async def info(request: Request) -> Response:
    served, default = shared_of(request), default_model(request)

    def describe() -> dict[str, Any]:
        with served.reading() as coll:
            return {"documents": len(coll), "default_model": default, "models": [
                {"field": name, "model": f.model, "dim": f.dim} for name, f in sorted(coll.fields.items())],
                "cameras": [{"name": n, "count": c} for n, c in coll.attribute_counts("camera")]}
    return JSONResponse(await asyncio.to_thread(describe))

async def spec(_: Request) -> Response:
    return JSONResponse(SPEC)


ROUTES = [
    Route("/api/openapi.json", spec),
    Route("/api/info", info),
    Route("/api/search", search_get, methods=["GET"]),
    Route("/api/search", search_post, methods=["POST"]),
    Route("/api/images/{docid}", original),
    Route("/api/thumbnails/{docid}", thumbnail),
]




def _chunks(fd: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """The file's bytes from an open descriptor, which is closed at the end (or when the client goes away)."""
    try:
        while chunk := os.read(fd, size):
            yield chunk
    finally:
        os.close(fd)


def _media_type(fd: int) -> str:
    """The image type by the file's first bytes (the indexer accepted it by content, not by name)."""
    head = os.pread(fd, 16, 0)
    for magic, kind in ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"),
                        (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff")):
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "image/avif" if head[8:12] in (b"avif", b"avis") else "image/heic"
    return "application/octet-stream"
