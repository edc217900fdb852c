"""Request parameters → one search the collection runs, with Vespa's query-API semantics.

Parameters come as a flat ``name → text`` map (URL parameters, or a JSON body flattened the way Vespa does:
nested objects become dotted keys, arrays and ``input.*`` objects stay JSON text, URL parameters win).

The rules are those of the application package ``clipseek vespa export`` writes, so a query answered here is
answered the same by Vespa, and one refused there is refused here with Vespa's error:

- ``queryProfile=<slug>`` (one per model) sets ``ranking.profile=<slug>_similarity`` and the YQL
  ``{targetHits:100}nearestNeighbor(<slug>_image, <slug>_text)``; the request's own parameters win.
- ``input=<text>`` is embedded into ``query(<slug>_text)`` with the selected rank profile's model (Vespa's
  ``embed(<slug>, @input)``).
- A request without YQL (and no profile giving one) is refused: "No query".
- A ``nearestNeighbor`` whose query tensor the selected rank profile does not declare is refused, as Vespa
  then reads the value as a string: only ``<slug>_similarity`` declares ``query(<slug>_text)``; the default
  profile declares none.

Whatever clipseek accepts beyond this (plain text without a profile, several models, weights) lives in the
native API under ``/api/``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .collection import (
    DEFAULT_TARGET_HITS,
    MAX_HITS,
    MAX_OFFSET,
    Collection,
    SearchResult,
)
from .errors import FieldError, IllegalQueryError, QueryError
from .models.encoder import Encoder
from .schema import ModelNames
from .tensors import TENSOR_FORMS, parse_tensor
from .yql import parse as parse_yql

MAX_INPUT_CHARS = 20_000  # CLIP reads 77 tokens; a longer text is a mistake or an attack
_TENSOR_PARAM = re.compile(r"^(?:input\.query|ranking\.features\.query|rankfeature\.query)\((?P<name>[^)]+)\)$")
_ALIASES = {"count": "hits", "start": "offset", "ranking": "ranking.profile", "timing": "presentation.timing",
            "format": "presentation.format", "format.tensors": "presentation.format.tensors",
            "query": "model.queryString", "queryprofile": "queryProfile"}


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
    query_profile: str | None = None

    @classmethod
    def from_params(cls, raw: Mapping[str, str]) -> SearchRequest:
        params = {_ALIASES.get(k, k): v for k, v in raw.items()}
        req = cls(yql=params.get("yql") or None, profile=params.get("ranking.profile") or None,
                  text=params.get("input"), tensor_format=params.get("presentation.format.tensors", "short"),
                  query_profile=params.get("queryProfile") or None)
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
        return req


def profile_field(coll: Collection, profile: str | None) -> str | None:
    """``<slug>_similarity`` → ``<slug>_image``; ``default``/None → None (rank by any nearestNeighbor)."""
    if profile in (None, "", "default", "unranked"):
        return None
    assert profile is not None
    fields = coll.fields
    names = ModelNames.of_profile(profile)
    if names is not None and names.image_field in fields:
        return names.image_field
    valid = ", ".join(["default"] + [ModelNames.for_field(name).rank_profile for name in sorted(fields)])
    raise FieldError(f"unknown rank profile {profile!r}; this collection has: {valid}")


def query_profile_defaults(coll: Collection, name: str | None) -> dict[str, str]:
    """The parameters query profile ``name`` sets: ``<slug>`` → its rank profile and nearestNeighbor YQL."""
    if name in (None, "", "default"):
        return {}
    assert name is not None
    fields = coll.fields
    names = ModelNames(name)
    if names.image_field not in fields:
        valid = ", ".join(["default", *(ModelNames.for_field(f).slug for f in sorted(fields))])
        raise FieldError(f"Could not resolve query profile '{name}'; this application has: {valid}")
    return {"ranking.profile": names.rank_profile, "yql": profile_yql(name)}


def profile_yql(slug: str, target_hits: int = DEFAULT_TARGET_HITS) -> str:
    """The YQL of query profile ``slug`` (``clipseek vespa export`` writes the same into the package)."""
    names = ModelNames(slug)
    return (f"select * from image_search where {{targetHits:{target_hits}}}"
            f"nearestNeighbor({names.image_field}, {names.text_tensor})")


def run(coll: Collection, req: SearchRequest, encoder_for: Callable[[str], Encoder]) -> SearchResult:
    """Run ``req`` as Vespa would run it against the exported package (see the module docstring)."""
    defaults = query_profile_defaults(coll, req.query_profile)
    profile = req.profile or defaults.get("ranking.profile")
    yql_text = req.yql or defaults.get("yql")
    if yql_text is None:
        raise IllegalQueryError("No query")
    rank_field = profile_field(coll, profile)
    declared = {ModelNames.for_field(rank_field).text_tensor} if rank_field else set()
    select = parse_yql(yql_text)
    for nn in select.nearest:
        if nn.tensor not in declared:
            raise QueryError(f"Expected 'query({nn.tensor})' to be a tensor, but it is a string: the rank profile "
                             f"'{profile or 'default'}' declares no input query({nn.tensor}) (use "
                             f"ranking.profile=<slug>_similarity with the tensor <slug>_text, or queryProfile=<slug>)")
    tensors: dict[str, Any] = {}
    for name, value in req.tensors.items():
        tensors[name] = parse_tensor(json.loads(value) if value.strip()[:1] in "[{" and _is_json(value) else value,
                                     f"input.query({name})")
    if req.text is not None and rank_field is not None:
        tensor = ModelNames.for_field(rank_field).text_tensor
        if tensor not in tensors:  # a request's own tensor wins, as over the query profile's embed()
            tensors[tensor] = encoder_for(coll.fields[rank_field].model).embed_texts([req.text])[0]
    return coll.search(yql_query=select, query_tensors=tensors, hits=req.hits, offset=req.offset,
                       rank_field=rank_field)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


__all__ = ["SearchRequest", "flatten_body", "parse_timeout", "run"]
