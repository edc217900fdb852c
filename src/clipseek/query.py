"""Request parameters → one search the collection runs, with Vespa's query-API semantics.

Parameters come as a flat ``name → text`` map (URL parameters, or a JSON body flattened the way Vespa does:
nested objects become dotted keys, arrays and ``input.*`` objects stay JSON text, URL parameters win). The
native app's plain-text ``input=`` is tokenized and encoded with the rank profile's model and becomes
``{targetHits:100}nearestNeighbor(<slug>_image, <slug>_text)``, as the seed's ``TextEmbeddingSearcher`` does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


from .collection import DEFAULT_TARGET_HITS, MAX_HITS, MAX_OFFSET, Collection, SearchResult
from .errors import FieldError, QueryError
from .models.encoder import Encoder
from .tensors import TENSOR_FORMS, parse_tensor

MAX_INPUT_CHARS = 20_000  # CLIP reads 77 tokens; a longer text is a mistake or an attack
_TENSOR_PARAM = re.compile(r"^(?:input\.query|ranking\.features\.query|rankfeature\.query)\((?P<name>[^)]+)\)$")
_ALIASES = {"count": "hits", "start": "offset", "ranking": "ranking.profile", "timing": "presentation.timing",
            "format": "presentation.format", "format.tensors": "presentation.format.tensors",
            "query": "model.queryString"}


def flatten_body(body: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Vespa's Json2SingleLevelMap: dotted keys; arrays and objects under ``input.`` kept as JSON text."""
    out: dict[str, str] = {}
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not name.startswith("input."):
            out.update(flatten_body(value, name + "."))
        elif isinstance(value, (dict, list)):
            out[name] = json.dumps(value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is not None:
            out[name] = str(value)
    return out


def parse_timeout(text: str) -> float:
    """Vespa's timeout: a number with ks/s/ms/µs (or us); no unit or an unknown one means seconds."""
    m = re.fullmatch(r"\s*([0-9]{1,12}(?:\.[0-9]{1,12})?)\s*([a-zµ]{0,3})\s*", text)
    if not m:
        raise QueryError(f"timeout {text[:40]!r} is not a number with an optional unit (ms, s)")
    scale = {"ks": 1000.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6}.get(m.group(2), 1.0)
    return float(m.group(1)) * scale


def _int(params: Mapping[str, str], name: str, default: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        number = float(text)
    except ValueError:
        raise QueryError(f"'{name}' must be a whole number, got {text[:40]!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise QueryError(f"'{name}' must be a whole number, got {text[:40]!r}")
    if number < 0:
        raise QueryError(f"'{name}' must be >= 0, got {text[:40]}")
    return int(min(number, 2 ** 62))


@dataclass
class SearchRequest:
    yql: str | None = None
    hits: int = 10
    offset: int = 0
    profile: str | None = None
    tensors: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    timeout: float = 0.5
    timing: bool = False
    tensor_format: str = "short"

    @classmethod
    def from_params(cls, raw: Mapping[str, str]) -> SearchRequest:
        params = {_ALIASES.get(k, k): v for k, v in raw.items()}
        req = cls(yql=params.get("yql") or None, profile=params.get("ranking.profile") or None,
                  text=params.get("input"), tensor_format=params.get("presentation.format.tensors", "short"))
        req.hits = min(_int(params, "hits", 10), MAX_HITS)
        req.offset = min(_int(params, "offset", 0), MAX_OFFSET)
        req.timing = params.get("presentation.timing", "false").lower() == "true"
        if "timeout" in params:
            req.timeout = parse_timeout(params["timeout"])
        for key, value in raw.items():
            m = _TENSOR_PARAM.match(key)
            if m:
                req.tensors[m.group("name")] = value
        if req.text is not None and len(req.text) > MAX_INPUT_CHARS:
            raise QueryError(f"'input' has {len(req.text):,} characters; at most {MAX_INPUT_CHARS:,} are accepted "
                             "(CLIP reads only the first 77 tokens)")
        if req.text is not None and not req.text.strip():
            raise QueryError("'input' is empty: give the text to search for, e.g. input=a+child+playing+football")
        if req.tensor_format not in TENSOR_FORMS:
            raise QueryError(f"unknown presentation.format.tensors {req.tensor_format[:40]!r}: use "
                             f"{', '.join(TENSOR_FORMS)}")
        if req.yql is None and req.text is None:
            raise QueryError("a query needs 'yql' or 'input' (plain text)")
        return req


def profile_field(coll: Collection, profile: str | None) -> str | None:
    """``<slug>_similarity`` → ``<slug>_image``; ``default``/None → None (rank by any nearestNeighbor)."""
    if profile in (None, "", "default", "unranked"):
        return None
    assert profile is not None
    fields = coll.fields
    if profile.endswith("_similarity") and f"{profile[: -len('_similarity')]}_image" in fields:
        return f"{profile[: -len('_similarity')]}_image"
    valid = ", ".join(["default"] + [f"{name[: -len('_image')]}_similarity" for name in sorted(fields)])
    raise FieldError(f"unknown rank profile {profile!r}; this collection has: {valid}")


def default_field(coll: Collection, preferred_model: str) -> str:
    fields = coll.fields
    if not fields:
        raise FieldError("the collection has no vector field yet: index images or feed documents first")
    for name, info in sorted(fields.items()):
        if info.model == preferred_model:
            return name
    return sorted(fields)[0]


def run(coll: Collection, req: SearchRequest, encoder_for: Callable[[str], Encoder],
        default_model: str = "ViT-B/32") -> SearchResult:
    """Run ``req``: encode ``input`` text if given, then the YQL the collection understands."""
    rank_field = profile_field(coll, req.profile)
    tensors: dict[str, Any] = {}
    for name, value in req.tensors.items():
        tensors[name] = parse_tensor(json.loads(value) if value.strip()[:1] in "[{" and _is_json(value) else value,
                                     f"input.query({name})")
    yql_text = req.yql
    if req.text is not None:
        fname = rank_field or default_field(coll, default_model)
        slug = fname[: -len("_image")]
        model = coll.fields[fname].model
        tensors[f"{slug}_text"] = encoder_for(model).embed_texts([req.text])[0]
        rank_field = fname
        if yql_text is None:
            yql_text = (f"select * from sources * where "
                        f"{{targetHits:{DEFAULT_TARGET_HITS}}}nearestNeighbor({fname}, {slug}_text)")
    assert yql_text is not None
    return coll.search(yql_query=yql_text, query_tensors=tensors, hits=req.hits, offset=req.offset,
                       rank_field=rank_field)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


__all__ = ["SearchRequest", "flatten_body", "parse_timeout", "run"]
