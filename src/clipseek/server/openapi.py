"""The native API's OpenAPI 3 description, served at ``/api/openapi.json`` (and fuzzed by the tests)."""

from __future__ import annotations

from typing import Any

from ..schema import ATTRIBUTES

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["status", "type", "message"],
    "properties": {"status": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}}}}}

_HIT = {"type": "object", "required": ["id", "relevance", "url", "thumbnail"], "properties": {
    "id": {"type": "string"}, "relevance": {"type": "number"}, "url": {"type": "string"},
    "thumbnail": {"type": "string"}, **{a.name: {"type": a.json} for a in ATTRIBUTES}}}

_RESULT = {"type": "object", "required": ["model", "field", "total", "documents", "took_ms", "hits"], "properties": {
    "query": {}, "model": {"type": "string"}, "field": {"type": "string"}, "total": {"type": "integer"},
    "documents": {"type": "integer"}, "took_ms": {"type": "number"}, "hits": {"type": "array", "items": _HIT}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_Q = [
    {"name": "model", "in": "query", "schema": {"type": "string"}, "description": "model name or field slug"},
    {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 400}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000}},
    {"name": "threshold", "in": "query", "schema": {"type": "number"},
     "description": "the least relevance kept, compared as hits print it (6 decimals)"},
    {"name": "folder", "in": "query", "schema": {"type": "string"}},
    {"name": "format", "in": "query", "schema": {"type": "string"}, "description": "comma-separated, e.g. JPEG,PNG"},
    {"name": "since", "in": "query", "schema": {"type": "number"},
     "description": "taken at or after (epoch s; the EXIF date, else the file's time)"},
    {"name": "until", "in": "query", "schema": {"type": "number"}},
    {"name": "camera", "in": "query", "schema": {"type": "string"}, "description": "camera make and model, whole"},
    {"name": "near", "in": "query", "schema": {"type": "string"}, "description": "LAT,LON,KM"},
    {"name": "sort", "in": "query", "schema": {"type": "string", "enum": ["relevance", "date"]},
     "description": "date: the hits above threshold, newest first"},
    {"name": "min_width", "in": "query", "schema": {"type": "integer"}},
    {"name": "min_height", "in": "query", "schema": {"type": "integer"}},
    {"name": "collapse", "in": "query", "schema": {"type": "boolean"},
     "description": "one hit per group of near-duplicates (offset counts hits before collapsing)"},
]
#: The JSON body of POST /api/search takes the same options as the query string (``format`` also as a list).
_BODY_OPTIONS = {p["name"]: p["schema"] for p in _Q} | {
    "format": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "camera": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "near": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "number"}, "minItems": 3,
                                            "maxItems": 3}]}}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "clipseek native API", "version": "1"},
    "paths": {
        "/api/info": {"get": {"responses": {"200": _json({"type": "object", "required": ["documents", "models"]},
                                                         "documents and models of the collection")}}},
        "/api/search": {
            "get": {
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "text query"},
                    {"name": "like", "in": "query", "schema": {"type": "string"}, "description": "more like this id"},
                    {"name": "not", "in": "query", "schema": {"type": "string"}, "description": "negative text"},
                    *_Q,
                ],
                "responses": {"200": _json(_RESULT, "ranked hits"), "400": _json(_ERROR, "bad request")},
            },
            "post": {
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "q": {"type": "string"},
                    "terms": {"type": "array", "items": {"type": "object", "properties": {
                        "text": {"type": "string"}, "id": {"type": "string"}, "weight": {"type": "number"}}}},
                    **_BODY_OPTIONS}}}}},
                "responses": {"200": _json(_RESULT, "ranked hits"), "400": _json(_ERROR, "bad request")},
            },
        },
        "/api/images/{docid}": {"get": {
            "parameters": [{"name": "docid", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the original file"}, "404": _json(_ERROR, "not indexed")}}},
        "/api/thumbnails/{docid}": {"get": {
            "parameters": [{"name": "docid", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "size", "in": "query", "schema": {"type": "integer", "enum": [128, 256, 512]}}],
            "responses": {"200": {"description": "JPEG thumbnail", "content": {"image/jpeg": {}}},
                          "400": _json(_ERROR, "bad size"), "404": _json(_ERROR, "not indexed"),
                          "422": _json(_ERROR, "the file can no longer be decoded")}}},
    },
}
