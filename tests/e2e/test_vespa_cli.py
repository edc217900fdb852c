"""The real `vespa` CLI (Go binary, from the vespacli wheel) against a real `clipseek serve`, unchanged.

`vespa feed` speaks h2c with gzipped bodies, `vespa query`/`document` HTTP/1.1, `vespa visit` probes `/` for a
document-api handler and the content cluster name (VESPA-API.md); each command's own exit status and output are
what a user would see.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipseek import load_model
from clipseek.collection import Collection

from ..conftest import indexed_gallery, missing
from ..serving import running_server


def _vespa_binary() -> str:
    found = shutil.which("vespa", path=str(Path(sys.executable).parent)) or shutil.which("vespa")
    if found is None:
        missing("the vespa CLI", "`make test` installs it (vespacli in requirements/test.txt)")
    return found


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return indexed_gallery(tmp_path_factory.mktemp("cli"), 25, seed=4242)[1]


@pytest.fixture()
def vespa(tmp_path):
    binary = _vespa_binary()
    env = dict(os.environ, VESPA_CLI_HOME=str(tmp_path / "vespa-home"), VESPA_CLI_CACHE_DIR=str(tmp_path / "vc"))

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([binary, *args, "--color", "never"], env=env, capture_output=True, text=True,
                              timeout=120)
        if ok:
            assert proc.returncode == 0, f"vespa {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc

    return run


def feed_file(coll: Collection, path: Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for doc in coll.iter_documents():
            fields = dict(doc.attributes())
            fields.update({k: [float(x) for x in v] for k, v in doc.vectors.items()})
            fh.write(json.dumps({"put": f"id:default:image_search::{doc.docid}", "fields": fields}) + "\n")
            n += 1
    return n


def test_vespa_feed_visit_query_and_document_against_clipseek_serve(source, tmp_path, vespa):
    with Collection.open(source, readonly=True) as a:
        n = feed_file(a, tmp_path / "docs.jsonl")
    with running_server(tmp_path / "b", tmp_path) as (url, _port):
        vespa("status", "-t", url, "--wait", "10")

        stats = json.loads(vespa("feed", "-t", url, str(tmp_path / "docs.jsonl")).stdout)
        assert stats["feeder.ok.count"] == n == 25 and stats["feeder.error.count"] == 0
        assert stats["http.response.code.counts"] == {"200": n}

        visited = [json.loads(line) for line in vespa("visit", "-t", url, "--chunk-count", "7").stdout.splitlines()]
        with Collection.open(source, readonly=True) as a:
            expected = {f"id:default:image_search::{d.docid}": d for d in a.iter_documents()}
        assert sorted(d["id"] for d in visited) == sorted(expected)
        for d in visited:
            np.testing.assert_array_equal(np.asarray(d["fields"]["tiny_image"]["values"], np.float32),
                                          expected[d["id"]].vectors["tiny_image"])
        ids_only = vespa("visit", "-t", url, "--field-set", "[id]").stdout.splitlines()
        assert len(ids_only) == n and all(set(json.loads(line)) == {"id"} for line in ids_only)

        # a plain-text query, as Vespa's text-image sample app takes it: same top hits as the library's own search
        yql = "select image_file_name from image_search where {targetHits:10}nearestNeighbor(tiny_image, tiny_text)"
        result = json.loads(vespa("query", "-t", url, yql, "input=a small red circle", "ranking=tiny_similarity",
                                  "hits=3").stdout)
        hits = result["root"]["children"]
        enc = load_model("tiny")
        with Collection.open(tmp_path / "b", readonly=True) as b:
            want = b.search(enc.embed_texts(["a small red circle"])[0], field="tiny_image", hits=3)
        assert [h["id"].rsplit("::", 1)[1] for h in hits] == [h.docid for h in want.hits]
        assert [h["relevance"] for h in hits] == pytest.approx([h.relevance for h in want.hits], abs=1e-6)
        assert set(hits[0]["fields"]) == {"sddocname", "documentid", "image_file_name"}
        # the same with the query tensor sent by the client
        vec = json.dumps([round(float(x), 7) for x in enc.embed_texts(["a small red circle"])[0]])
        tensor = json.loads(vespa("query", "-t", url, yql, f"ranking.features.query(tiny_text)={vec}",
                                  "ranking=tiny_similarity", "hits=3").stdout)
        assert [h["id"] for h in tensor["root"]["children"]] == [h["id"] for h in hits]
        bad = vespa("query", "-t", url, "select * from image_search where nearestNeighbor(tiny_image", ok=False)
        # (the CLI prints a 4xx but exits 0 for queries)
        assert "invalid query: 400" in bad.stderr and "Could not parse YQL at column" in bad.stderr

        # single documents
        some_id = visited[0]["id"]
        got = json.loads(vespa("document", "get", "-t", url, some_id).stdout)
        assert got["id"] == some_id and got["fields"]["image_file_name"] == expected[some_id].image_file_name
        (tmp_path / "new.json").write_text(json.dumps({"put": "id:default:image_search::brand-new", "fields": {
            "image_file_name": "new.jpg", "tiny_image": [1.0] + [0.0] * 95}}))
        vespa("document", "put", "-t", url, str(tmp_path / "new.json"))
        vespa("document", "remove", "-t", url, some_id)
        missing = vespa("document", "get", "-t", url, some_id, ok=False)
        assert "Status 404" in missing.stderr  # (printed as an error; the CLI's exit status stays 0)
        (tmp_path / "short.json").write_text(json.dumps({"put": "id:default:image_search::short", "fields": {
            "tiny_image": [0.1, 0.2]}}))
        wrong = vespa("document", "put", "-t", url, str(tmp_path / "short.json"), ok=False)
        assert "Status 400" in wrong.stderr and "takes 96 values" in wrong.stdout + wrong.stderr
    with Collection.open(tmp_path / "b", readonly=True) as b:
        assert len(b) == n and b.get("brand-new") is not None and b.get(some_id.rsplit("::", 1)[1]) is None
        assert b.get("short") is None


def readme_queries() -> tuple[list[list[str]], list[dict]]:
    """The README's `vespa query` commands (as argument lists) and pyvespa query bodies."""
    import ast
    import shlex

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = [shlex.split(line.split("$ vespa query", 1)[1].split("#")[0])
                for line in text.splitlines() if line.startswith("$ vespa query")]
    bodies = []
    for match in re.finditer(r"app\.query\(body=(\{.*?\})\)", text, re.S):
        bodies.append(ast.literal_eval(match.group(1)))
    return commands, bodies


def test_every_readme_query_runs_against_clipseek_serve(source, tmp_path, vespa):
    """What the README tells users to send works against `clipseek serve` (with the tiny model in place of
    ViT-B/32), with the vespa CLI and with pyvespa; each is also a query the exported package accepts."""
    from vespa.application import Vespa

    commands, bodies = readme_queries()
    assert len(commands) >= 2 and len(bodies) >= 2
    with running_server(source, tmp_path, "--model", "tiny") as (url, port):
        for args in commands:
            assert args[:2] == ["-t", "http://127.0.0.1:8080"], args
            args = [a.replace("vit_b_32", "tiny") for a in args[2:]]
            result = json.loads(vespa("query", "-t", url, *args).stdout)
            assert len(result["root"]["children"]) == 10, args
        app = Vespa(url="http://127.0.0.1", port=port)
        for body in bodies:
            body = {k: v.replace("vit_b_32", "tiny") if isinstance(v, str) else v for k, v in body.items()}
            res = app.query(body=body)
            assert res.is_successful() and len(res.hits) == body["hits"], body


def test_a_query_vespa_refuses_is_refused_with_vespas_error(source, tmp_path, vespa):
    with running_server(source, tmp_path, "--model", "tiny") as (url, _port):
        bad = vespa("query", "-t", url, "input=a dog", ok=False)  # no YQL, no query profile
        assert "No query" in bad.stdout + bad.stderr
        yql = "select * from image_search where {targetHits:10}nearestNeighbor(tiny_image, tiny_text)"
        bad = vespa("query", "-t", url, yql, "input=a dog", ok=False)  # the default rank profile declares no input
        assert "Expected 'query(tiny_text)' to be a tensor, but it is a string" in bad.stdout + bad.stderr
