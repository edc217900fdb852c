"""Hypothesis against Vespa's APIs as clipseek serves them (/search/ and /document/v1/): whatever the
parameters, YQL, selection, ids or bodies, the answer is JSON and never a 5xx. Examples: 60 a test by default,
CLIPSEEK_FUZZ_EXAMPLES for a longer run."""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from clipseek import load_model
from clipseek.server import create_app

from ..conftest import indexed_gallery

EXAMPLES = int(os.environ.get("CLIPSEEK_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
DOC = "/document/v1/default/image_search/docid/"

numbers = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str), st.floats(allow_nan=True).map(repr),
                    st.sampled_from(["1e400", "-0", "1.2.3", "0x10", "١٢", "²", "", " 7 ", "10ms", "5 ks"]))
texts = st.one_of(st.text(max_size=40), numbers)
YQL_WORDS = ["select", "*", "from", "sources", "where", "nearestNeighbor", "(", ")", "{", "}", "[", "]", ":", ",",
             "targetHits", "10", "0", "-1", "99999999999999999999999", "1e400", "tiny_image", "tiny_text", "q", "and",
             "or", "true", "false", "contains", '"x"', "'y'", "size", ">", "<", "=", ">=", "limit", "offset", ";",
             "approximate", "label", "distanceThreshold", "hnsw.exploreAdditionalHits", "path", "\\", '"', "!",
             "image_file_name", "documentid", "userQuery()", "order", "by"]
yql = st.lists(st.sampled_from(YQL_WORDS), max_size=30).map(lambda w: "select * from sources * where " + " ".join(w))
SEL_WORDS = ["image_search", "image_search.size", "image_search.path", "image_search.mtime", "image_search.nope",
             "id.namespace", "==", "!=", "<", ">=", "=", "=~", "and", "or", "not", "(", ")", "true", "false", "null",
             '"a*"', "'b?'", "7", "1e400", "-99999999999999999999999", '"\\"', "music.year"]
selection = st.lists(st.sampled_from(SEL_WORDS), max_size=12).map(" ".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
FIELD_NAMES = ["image_file_name", "path", "size", "mtime", "width", "tiny_image", "TINY_image", "vit_b_32_image",
               "nope", "content_hash", "format", "indexed_at"]
fields = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8),
                         json_values | st.lists(st.floats(), min_size=96, max_size=96)
                         | st.fixed_dictionaries({"assign": json_values}), max_size=4)
SEARCH_KEYS = ["yql", "input", "hits", "offset", "timeout", "ranking.profile", "ranking", "presentation.format.tensors",
               "input.query(tiny_text)", "input.query(q)", "presentation.timing", "timing", "count", "start"]
DOC_KEYS = ["selection", "continuation", "wantedDocumentCount", "slices", "sliceId", "format.tensors", "create",
            "fieldSet", "cluster", "timeout", "condition"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-vespa")
    tiny = load_model("tiny")
    indexed_gallery(base, 20, seed=93, model=tiny)
    app = create_app(base / "c", encoders=lambda _m: tiny, default_model="tiny", allow_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def check(resp):
    where = f"{resp.request.method} {str(resp.request.url)[:300]}"
    assert resp.status_code < 500, (where, resp.status_code, resp.text[:500])
    if resp.content:
        try:
            json.loads(resp.content)
        except ValueError:
            raise AssertionError(f"{where}: {resp.status_code} answered with a body that is not JSON: "
                                 f"{resp.content[:200]!r}") from None


@SETTINGS
@given(params=st.dictionaries(st.sampled_from(SEARCH_KEYS), texts | yql, max_size=5), query=yql,
       post=st.booleans(), body=st.none() | st.dictionaries(st.sampled_from(SEARCH_KEYS), json_values, max_size=4))
def test_search_never_fails(client, params, query, post, body):
    params.setdefault("yql", query)
    if post:
        check(client.post("/search/", params=params, content=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"}))
    else:
        check(client.get("/search/?" + urllib.parse.urlencode(params)))


@SETTINGS
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), docid=st.text(min_size=1, max_size=30),
       params=st.dictionaries(st.sampled_from(DOC_KEYS), texts | selection, max_size=4),
       body=st.one_of(fields.map(lambda f: json.dumps({"fields": f}).encode()),
                      json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)),
       ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]))
def test_document_api_never_fails(client, method, docid, params, body, ctype):
    path = DOC + urllib.parse.quote(docid, safe="")
    headers = {"Content-Type": ctype} if ctype else {}
    check(client.request(method, path, params=params, content=body if method in ("POST", "PUT") else None,
                         headers=headers))


@SETTINGS
@given(method=st.sampled_from(["GET", "DELETE"]), sel=selection,
       params=st.dictionaries(st.sampled_from(DOC_KEYS), texts, max_size=4), cluster_wide=st.booleans())
def test_visits_and_selective_deletes_never_fail(client, method, sel, params, cluster_wide):
    params = {**params, "selection": sel}
    if cluster_wide:
        params["cluster"] = "image_search"
        check(client.request("GET", "/document/v1/", params=params))
    else:
        check(client.request(method, DOC, params=params))
