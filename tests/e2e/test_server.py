"""`clipseek serve` on a real uvicorn at 127.0.0.1, driven by pyvespa (unchanged) and plain HTTP."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clipseek import load_model, synth
from clipseek.collection import Collection

from ..conftest import indexed_gallery, need_module
from ..serving import env_for, running_server

vespa_app = need_module("vespa.application")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    gallery, coll_dir = indexed_gallery(base, 80, seed=61)
    captions = [line.split("\t", 1) for line in (gallery / "captions.txt").read_text().splitlines()]
    with running_server(coll_dir, base, "--model", "tiny") as (url, port):
        yield url, port, captions, coll_dir


def library_ranking(coll_dir, caption, k=5):
    """What the library itself returns for a caption: the server must agree exactly."""
    model = load_model("tiny")
    with Collection.open(coll_dir, readonly=True) as coll:
        res = coll.search(model.embed_texts([caption])[0], field="tiny_image", hits=k, target_hits=100)
    return [h.fields["image_file_name"] for h in res.hits], [h.relevance for h in res.hits]


def http(url, data=None, method=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_startup_line_and_status(served):
    url, _, _, _ = served
    status, body = http(url + "/ApplicationStatus")
    assert status == 200 and body["documents"] == 80


def test_pyvespa_text_query_finds_the_right_image(served):
    url, port, captions, coll_dir = served
    app = vespa_app.Vespa(url="http://127.0.0.1", port=port)
    name, caption = captions[17]
    res = app.query(body={"input": caption, "queryProfile": "tiny", "hits": 3})
    assert res.is_successful()
    names, relevance = library_ranking(coll_dir, caption, 3)
    assert [h["fields"]["image_file_name"] for h in res.hits] == names and name in names
    assert [h["relevance"] for h in res.hits] == pytest.approx(relevance, abs=1e-9)
    assert res.number_documents_indexed == 80 and len(res.hits) == 3
    assert res.hits[0]["id"].startswith("id:default:image_search::")
    assert res.hits[0]["fields"]["sddocname"] == "image_search"


def test_pyvespa_yql_with_query_tensor(served):
    url, port, captions, coll_dir = served
    name, caption = captions[40]
    vec = load_model("tiny").embed_texts([caption])[0].tolist()
    app = vespa_app.Vespa(url="http://127.0.0.1", port=port)
    res = app.query(body={"yql": "select * from sources * where {targetHits:10}nearestNeighbor(tiny_image, tiny_text)",
                          "input.query(tiny_text)": vec, "ranking.profile": "tiny_similarity", "hits": 1})
    assert res.hits[0]["fields"]["image_file_name"] == library_ranking(coll_dir, caption, 1)[0][0]
    assert 0 < res.hits[0]["relevance"] <= 1


def test_sample_app_query_shape(served):
    url, _, _, _ = served
    status, body = http(url + "/search/?queryProfile=tiny&input=a+child+playing+football")
    assert status == 200
    root = body["root"]
    assert list(root)[:4] == ["id", "relevance", "fields", "coverage"] and root["id"] == "toplevel"
    assert root["fields"]["totalCount"] == 80  # targetHits 100 over 80 documents
    assert len(root["children"]) == 10
    child = root["children"][0]
    assert set(child) == {"id", "relevance", "source", "fields"}
    assert child["relevance"] >= root["children"][1]["relevance"]


def test_gzipped_post_body_like_pyvespa(served):
    url, _, captions, coll_dir = served
    body = gzip.compress(json.dumps({"input": captions[5][1], "queryProfile": "tiny", "hits": 1,
                                  "presentation": {"timing": True}}).encode())
    status, out = http(url + "/search/", data=body, method="POST",
                       headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200
    assert out["root"]["children"][0]["fields"]["image_file_name"] == library_ranking(coll_dir, captions[5][1])[0][0]
    assert list(out) == ["timing", "root"] and out["timing"]["searchtime"] > 0


@pytest.mark.parametrize("params, code", [
    ({"yql": "select * from sources * where nearestNeighbor(tiny_image, q)"}, 3),
    ({"yql": "select * from sources * where {targetHits:5}nearestNeighbor(tiny_image, q)",
      "input.query(q)": "[1,2,3]"}, 4),
    ({"yql": "select * from sources * where {targetHits:5}nearestNeighbor(tiny_image, q)",
      "input.query(q)": "[\"a\"]"}, 4),
    ({"input": "x", "queryProfile": "tiny", "ranking": "nope_similarity"}, 4),
    ({"input": "x"}, 3),  # Vespa: "No query" (no YQL, and the default query profile sets none)
    ({"input": "x", "queryProfile": "nope"}, 4),
    # the default rank profile declares no query(tiny_text): Vespa reads the tensor as a string and refuses
    ({"yql": "select * from sources * where {targetHits:5}nearestNeighbor(tiny_image, tiny_text)", "input": "x"}, 4),
    ({"yql": "select * from sources * where {targetHits:5}nearestNeighbor(tiny_image, tiny_text)",
      "input.query(tiny_text)": "[" + ",".join(["0.1"] * 96) + "]"}, 4),
    ({"input": "   "}, 4),
    ({"hits": "many", "input": "x"}, 4),
])
def test_bad_queries_are_vespa_shaped_400s(served, params, code):
    url, _, _, _ = served
    status, body = http(url + "/search/?" + urllib.parse.urlencode(params))
    assert status == 400
    err = body["root"]["errors"][0]
    assert err["code"] == code and err["summary"] and err["message"]


def random_docs(prefix: str, n: int, seed: int) -> list[dict]:
    """pyvespa feed items: ``<prefix><i>`` with a file name and a random tiny_image vector."""
    rng = np.random.default_rng(seed)
    return [{"id": f"{prefix}{i}", "fields": {"image_file_name": f"{prefix}{i}.png",
                                               "tiny_image": rng.standard_normal(96).tolist()}} for i in range(n)]


def test_pyvespa_feed_get_update_delete_visit(served):
    url, port, _, _ = served
    app = vespa_app.Vespa(url="http://127.0.0.1", port=port)
    docs = random_docs("fed", 20, seed=0)
    results = []
    app.feed_iterable(docs, schema="image_search", namespace="default", callback=lambda r, i: results.append(r))
    assert len(results) == 20 and all(r.is_successful() for r in results)
    got = app.get_data(schema="image_search", data_id="fed3", namespace="default")
    assert got.is_successful()
    fields = got.json["fields"]
    assert fields["image_file_name"] == "fed3.png"
    np.testing.assert_allclose(fields["tiny_image"]["values"], docs[3]["fields"]["tiny_image"], rtol=1e-6)
    assert fields["tiny_image"]["type"] == "tensor<float>(x[96])"
    res = app.query(body={"yql": "select * from sources * where {targetHits:5}nearestNeighbor(tiny_image, tiny_text)",
                          "input.query(tiny_text)": docs[3]["fields"]["tiny_image"], "hits": 1,
                          "ranking.profile": "tiny_similarity"})
    assert res.hits[0]["fields"]["image_file_name"] == "fed3.png"
    upd = app.update_data(schema="image_search", data_id="fed3", fields={"image_file_name": "renamed.png"},
                          namespace="default")
    assert upd.is_successful()
    assert app.get_data(schema="image_search", data_id="fed3", namespace="default").json["fields"][
        "image_file_name"] == "renamed.png"
    assert app.delete_data(schema="image_search", data_id="fed3", namespace="default").is_successful()
    missing = app.get_data(schema="image_search", data_id="fed3", namespace="default")
    assert missing.status_code == 404
    seen = []
    cont = None
    while True:
        q = "wantedDocumentCount=30" + (f"&continuation={cont}" if cont else "")
        status, page = http(f"{url}/document/v1/default/image_search/docid/?{q}")
        assert status == 200
        seen += [d["id"] for d in page["documents"]]
        cont = page.get("continuation")
        if not cont:
            break
    assert len(seen) >= 99 and "id:default:image_search::fed3" not in seen


def test_documents_keep_the_namespace_they_were_fed_under(served):
    """pyvespa's default namespace is the schema name: hits and gets say id:image_search:image_search::…"""
    url, port, _, _ = served
    app = vespa_app.Vespa(url="http://127.0.0.1", port=port)
    vec = np.random.default_rng(11).standard_normal(96).tolist()
    assert app.feed_data_point(schema="image_search", data_id="ns-1", fields={"tiny_image": vec}).is_successful()
    res = app.query(body={"yql": "select * from sources * where {targetHits:5}nearestNeighbor(tiny_image, tiny_text)",
                          "input.query(tiny_text)": vec, "hits": 2, "ranking.profile": "tiny_similarity"})
    assert res.hits[0]["id"] == "id:image_search:image_search::ns-1"
    assert res.hits[0]["fields"]["documentid"] == "id:image_search:image_search::ns-1"
    assert res.hits[1]["id"].startswith("id:default:image_search::")  # indexed ones: the collection's namespace
    assert app.get_data(schema="image_search", data_id="ns-1").json["id"] == "id:image_search:image_search::ns-1"
    status, page = http(f"{url}/document/v1/?cluster=image_search&wantedDocumentCount=1000")
    assert status == 200 and "id:image_search:image_search::ns-1" in [d["id"] for d in page["documents"]]
    assert app.delete_data(schema="image_search", data_id="ns-1").is_successful()


def test_per_type_visits_and_deletes_keep_to_their_namespace_and_slices_split(served):
    """Vespa's /document/v1/<ns>/<type>/docid/ visits (and deletes) only namespace <ns>; slices are disjoint."""
    url, port, _, _ = served
    app = vespa_app.Vespa(url="http://127.0.0.1", port=port)
    docs = random_docs("sl-", 13, seed=5)
    app.feed_iterable(docs, schema="image_search", namespace="slicing")  # a namespace of their own

    def visited(namespace, slices):
        return [d["id"] for s in app.visit("image_search", schema="image_search", namespace=namespace,
                                           slices=slices, wanted_document_count=4) for page in s
                for d in page.documents]
    theirs = [f"id:slicing:image_search::sl-{i}" for i in range(13)]
    assert sorted(visited("slicing", 1)) == sorted(visited("slicing", 3)) == sorted(theirs)
    status, page = http(f"{url}/document/v1/?cluster=image_search&wantedDocumentCount=1000")  # every namespace
    assert status == 200 and set(theirs) < {d["id"] for d in page["documents"]}
    everyone_else = visited("default", 2)
    assert sorted(everyone_else) == sorted(d["id"] for d in page["documents"] if d["id"].startswith("id:default:"))
    assert len(everyone_else) >= 80
    status, body = http(f"{url}/document/v1/slicing/image_search/docid/?slices=2&sliceId=2")
    assert status == 400 and "sliceId" in body["message"]
    req = urllib.request.Request(f"{url}/document/v1/slicing/image_search/docid/?selection=true&cluster=image_search",
                                 method="DELETE")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
    assert visited("slicing", 1) == [] and sorted(visited("default", 1)) == sorted(everyone_else)


def test_pyvespa_async_feed_and_query_over_h2c(served):
    """pyvespa's async layer speaks only HTTP/2 cleartext (prior knowledge); an HTTP/1.1-only server gives 599s."""
    import asyncio

    url, port, captions, coll_dir = served
    app = vespa_app.Vespa(url="http://127.0.0.1", port=port)
    docs = random_docs("h2-", 30, seed=1)
    statuses = []
    app.feed_async_iterable(docs, schema="image_search", namespace="default",
                            callback=lambda r, i: statuses.append(r.status_code))
    assert statuses == [200] * 30

    async def query():
        async with app.asyncio() as client:
            return await client.query(body={"input": captions[2][1], "queryProfile": "tiny", "hits": 3})
    res = asyncio.run(query())
    assert res.status_code == 200 and len(res.hits) == 3
    assert app.get_data(schema="image_search", data_id="h2-7", namespace="default").is_successful()


def test_document_api_errors(served):
    url, _, _, _ = served
    status, body = http(url + "/document/v1/default/music/docid/x", data=b'{"fields":{}}', method="POST",
                        headers={"Content-Type": "application/json"})
    assert status == 400 and "music" in body["message"]
    as_json = {"Content-Type": "application/json"}
    status, body = http(url + "/document/v1/default/image_search/docid/x", method="POST", headers=as_json,
                        data=json.dumps({"fields": {"tiny_image": [1, 2]}}).encode())
    assert status == 400 and "96" in body["message"]
    status, body = http(url + "/document/v1/default/image_search/docid/x", method="POST", headers=as_json,
                        data=json.dumps({"fields": {"color": "red"}}).encode())
    assert status == 400 and "No field 'color'" in body["message"]
    status, body = http(url + "/document/v1/default/image_search/docid/x", method="POST", data=b"{nope",
                        headers=as_json)
    assert status == 400 and "malformed" in body["message"]
    status, body = http(url + "/document/v1/default/image_search/docid/x", method="POST",
                        data=json.dumps({"fields": {"image_file_name": "x.jpg"}}).encode())
    assert status == 415 and "application/json" in body["message"]  # what a cross-site form could send


def test_queries_are_served_while_clipseek_index_writes(tmp_path):
    first = synth.write_dataset(tmp_path / "g1", 40, seed=71)
    second = synth.write_dataset(tmp_path / "g2", 200, seed=72)
    coll_dir = tmp_path / "c"
    env = env_for(tmp_path)
    cli = [sys.executable, "-m", "clipseek.cli"]
    subprocess.run(cli + ["index", str(first / "images"), "--collection", str(coll_dir), "--model", "tiny"],
                   check=True, env=env, capture_output=True)
    with running_server(coll_dir, tmp_path, "--model", "tiny") as (base_url, _port):
        url = base_url + "/search/?"
        indexer = subprocess.Popen(cli + ["index", str(second / "images"), "--collection", str(coll_dir),
                                          "--model", "tiny", "--batch-size", "8"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        counts = []
        while indexer.poll() is None:
            query = {"input": "a red circle", "queryProfile": "tiny", "hits": 1}
            status, body = http(url + urllib.parse.urlencode(query))
            assert status == 200, body
            counts.append(body["root"]["coverage"]["documents"])
        out = indexer.stdout.read()
        assert indexer.returncode == 0, out
        assert "200 indexed" in out
        name, caption = (second / "captions.txt").read_text().splitlines()[3].split("\t", 1)
        status, body = http(url + urllib.parse.urlencode({"input": caption, "queryProfile": "tiny", "hits": 5}))
        assert body["root"]["coverage"]["documents"] == 240
        assert name in [c["fields"]["image_file_name"] for c in body["root"]["children"]]
        assert len(counts) >= 3 and counts[0] >= 40 and counts == sorted(counts)  # never went backwards


def test_huge_query_string_is_refused_not_crashed(served):
    url, _, _, _ = served
    status, body = http_status(url + "/search/?input=" + "a" * 100_000)
    assert status == 400 and b"at most 20,000" in body
    try:  # 10 MB: the server refuses and closes while the client is still sending
        status, _ = http_status(url + "/search/?input=" + "a" * (10 * 1024 * 1024))
        assert 400 <= status < 500
    except urllib.error.URLError as exc:
        assert isinstance(exc.reason, (BrokenPipeError, ConnectionResetError))
    assert http(url + "/ApplicationStatus")[0] == 200  # and it keeps serving


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_idle_writer_is_never_closed_under_a_reader(tmp_path):
    """16 readers, a writer and a janitor releasing the idle writer as fast as it can (idle time 0): before the
    writer counted its users this crashed with SIGSEGV within seconds, 3 runs in 3."""
    stress = Path(__file__).resolve().parents[1] / "release_stress.py"
    proc = subprocess.run([sys.executable, str(stress), str(tmp_path / "c"), "4"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert int(proc.stdout.split()[1]) > 16
