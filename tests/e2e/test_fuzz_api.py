"""Schemathesis against the native API's own OpenAPI spec: no server error, no response off the spec."""

from __future__ import annotations

import os

import hypothesis
import pytest

from clipseek import load_model
from clipseek.server import create_app

from ..conftest import indexed_gallery, need_module

schemathesis = need_module("schemathesis")


def make_app(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    tiny = load_model("tiny")
    indexed_gallery(base, 20, seed=91, model=tiny)
    return create_app(base / "c", encoders=lambda _m: tiny, default_model="tiny", allow_hosts=["testserver"])


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    return schemathesis.openapi.from_asgi("/api/openapi.json", make_app(tmp_path_factory))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(max_examples=int(os.environ.get("CLIPSEEK_FUZZ_EXAMPLES", "25")), deadline=None)
def test_native_api_never_fails(case):
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    # every response: no 5xx, a documented status, the documented content type and body shape. (Schemathesis's
    # "positive data accepted" check is left out: a query with every term empty is valid to the schema but
    # rightly a 400 — OpenAPI 3.0 cannot say "one of q/like/not is required".)
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
