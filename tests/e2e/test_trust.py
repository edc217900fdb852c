"""What an attacker or a careless client can do to a running `clipseek serve` on 127.0.0.1: every answer a 4xx
that says why, no file served that `clipseek index` did not index as it is now, no write from a foreign page."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.parse

import pytest

from clipseek import synth
from clipseek.collection import Collection

from ..serving import env_for, running_server

DOC = "/document/v1/default/image_search/docid/"
JSON_TYPE = {"Content-Type": "application/json"}


def call(port, method, path, body=None, headers=None):
    """One request over a fresh connection; (status, parsed JSON or raw bytes). Host is 127.0.0.1 unless given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    gallery = synth.write_dataset(base / "g", 12, seed=401)
    images = gallery / "images"
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes((images / "synth_401_00000.png").read_bytes())
    (images / "linked.png").symlink_to(images / "synth_401_00001.png")
    (images / "edited.png").write_bytes((images / "synth_401_00002.png").read_bytes())
    coll_dir = base / "c"
    subprocess.run([sys.executable, "-m", "clipseek.cli", "index", str(images), "--collection", str(coll_dir),
                    "--model", "tiny"], check=True, env=env_for(base), capture_output=True)
    with Collection.open(coll_dir, readonly=True) as coll:
        ids = {d.image_file_name: d.docid for d in coll.iter_documents(with_vectors=False)}
    with running_server(coll_dir, base, "--model", "tiny", "--allow-host", "photos.local") as (url, port):
        yield port, ids, images, outside, coll_dir


def test_an_indexed_unchanged_file_is_served(served):
    port, ids, images, _, _ = served
    status, body = call(port, "GET", f"/api/images/{ids['synth_401_00003.png']}")
    assert status == 200 and body == (images / "synth_401_00003.png").read_bytes()
    status, _ = call(port, "GET", f"/api/thumbnails/{ids['synth_401_00003.png']}?size=128")
    assert status == 200


def test_a_path_set_through_the_document_api_is_never_served(served):
    port, ids, _, outside, _ = served
    for path in ("/etc/passwd", str(outside / "secret.png")):
        body = json.dumps({"fields": {"path": path, "image_file_name": "x"}})
        assert call(port, "POST", DOC + "planted", body, JSON_TYPE)[0] == 200
        assert call(port, "GET", "/api/images/planted")[0] == 404
        assert call(port, "GET", "/api/thumbnails/planted")[0] == 404
    # a put over an indexed document's id replaces it: what it points at is no longer served
    victim = ids["synth_401_00004.png"]
    body = json.dumps({"fields": {"path": str(outside / "secret.png")}})
    assert call(port, "POST", DOC + victim, body, JSON_TYPE)[0] == 200
    assert call(port, "GET", f"/api/images/{victim}")[0] == 404
    # an update of its path leaves what the indexer recorded in charge: the original file, checked
    other = ids["synth_401_00005.png"]
    body = json.dumps({"fields": {"path": {"assign": "/etc/passwd"}}})
    assert call(port, "PUT", DOC + other, body, JSON_TYPE)[0] == 200
    status, data = call(port, "GET", f"/api/images/{other}")
    assert status == 200 and data[:4] == b"\x89PNG"


def test_a_retargeted_link_or_a_changed_file_is_not_served(served):
    port, ids, images, outside, _ = served
    assert call(port, "GET", f"/api/images/{ids['linked.png']}")[0] == 200
    os.unlink(images / "linked.png")
    (images / "linked.png").symlink_to(outside / "secret.png")
    assert call(port, "GET", f"/api/images/{ids['linked.png']}")[0] == 404
    assert call(port, "GET", f"/api/thumbnails/{ids['linked.png']}")[0] == 404
    with open(images / "edited.png", "ab") as fh:  # the same name, other bytes since indexing
        fh.write(b"appended")
    assert call(port, "GET", f"/api/images/{ids['edited.png']}")[0] == 404


def test_cross_site_writes_and_rebound_hosts_are_refused(served):
    port, _, _, _, _ = served
    body = json.dumps({"fields": {"image_file_name": "x"}})
    # a form or fetch(no-cors) from any page can send text/plain: not a document
    status, data = call(port, "POST", DOC + "xsite", body, {"Content-Type": "text/plain"})
    assert status == 415
    status, data = call(port, "POST", DOC + "xsite", body, {**JSON_TYPE, "Origin": "https://evil.example"})
    assert status == 403 and "evil.example" in data["error"]["message"]
    status, data = call(port, "DELETE", DOC + "xsite", None, {"Origin": "null"})
    assert status == 403
    assert call(port, "POST", DOC + "xsite", body, {**JSON_TYPE, "Origin": f"http://127.0.0.1:{port}"})[0] == 200
    # DNS rebinding: the browser sends the attacker's own name as Host
    status, data = call(port, "GET", "/search/?input=a+dog", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "--allow-host" in data["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"photos.local:{port}", "PHOTOS.LOCAL"):
        assert call(port, "GET", "/ApplicationStatus", headers={"Host": host})[0] == 200, host


def test_selective_delete_and_visit_honour_the_selection(served):
    port, _, _, _, _ = served
    for i, size in enumerate([10, 20, 30, 40]):
        body = json.dumps({"fields": {"image_file_name": f"sel{i}.jpg", "size": size, "format": "SEL"}})
        assert call(port, "POST", DOC + f"sel{i}", body, JSON_TYPE)[0] == 200
    sel = urllib.parse.quote('image_search.format == "SEL" and image_search.size > 15')
    status, data = call(port, "GET", f"{DOC}?cluster=image_search&selection={sel}")
    assert status == 200 and sorted(d["id"].rsplit(":", 1)[1] for d in data["documents"]) == ["sel1", "sel2", "sel3"]
    sel = urllib.parse.quote('image_search.image_file_name = "sel?.jpg" and not image_search.size >= 30')
    ids, cont = [], None
    while True:  # a page of one at a time: every continuation moves on
        status, data = call(port, "DELETE", f"{DOC}?cluster=image_search&wantedDocumentCount=1&selection={sel}"
                            + (f"&continuation={cont}" if cont else ""))
        assert status == 200
        ids.append(data["documentCount"])
        cont = data.get("continuation")
        if not cont:
            break
    assert sum(ids) == 2
    left = [call(port, "GET", DOC + f"sel{i}")[0] for i in range(4)]
    assert left == [404, 404, 200, 200]
    for bad in ('image_search.size =~ "1.*"', "id.user == 3", "music.year > 2000", "image_search.nope == 1",
                "image_search.size > ", "((((", "image_search.size > 99999999999999999999"):
        status, data = call(port, "GET", f"{DOC}?cluster=image_search&selection={urllib.parse.quote(bad)}")
        assert status == 400 and data["message"], bad
    status, data = call(port, "DELETE", f"{DOC}?cluster=image_search")  # no selection: never "delete all"
    assert status == 400 and "selection" in data["message"]
    assert call(port, "GET", DOC + "sel2")[0] == 200


def test_ids_are_decoded_once_and_field_names_are_exact(served):
    port, _, _, _, _ = served
    for docid in ("50%41off", "x y", "x%20y", "a/b#c"):
        body = json.dumps({"fields": {"image_file_name": docid}})
        path = DOC + urllib.parse.quote(docid, safe="")
        assert call(port, "POST", path, body, JSON_TYPE)[0] == 200
    for docid in ("50%41off", "x y", "x%20y", "a/b#c"):
        status, data = call(port, "GET", DOC + urllib.parse.quote(docid, safe=""))
        assert status == 200 and data["fields"]["image_file_name"] == docid
        assert data["id"] == f"id:default:image_search::{docid}"
    status, data = call(port, "POST", DOC + "case", json.dumps({"fields": {"TINY_image": [0.1] * 96}}), JSON_TYPE)
    assert status == 400 and "TINY_image" in data["message"]
    status, data = call(port, "POST", DOC + "case", json.dumps({"fields": {"Path": "/x"}}), JSON_TYPE)
    assert status == 400 and "'Path'" in data["message"]


@pytest.mark.parametrize("fields, named", [
    ('{"mtime": 1e999}', "mtime"), ('{"size": 99999999999999999999}', "size"), ('{"width": "640"}', "width"),
    ('{"height": true}', "height"), ('{"path": 5}', "path"), ('{"size": 1.5}', "size"),
    ('{"image_file_name": "a\\u0000b"}', "image_file_name"),
])
def test_attribute_values_are_type_checked_before_storage(served, fields, named):
    port, _, _, _, _ = served
    status, data = call(port, "POST", DOC + "typed", '{"fields": %s}' % fields, JSON_TYPE)
    assert status == 400 and named in data["message"]
    assert call(port, "GET", DOC + "typed")[0] == 404


MALFORMED = [
    "/search/?input=x&hits=1e400", "/search/?input=x&hits=nan", "/search/?input=x&timeout=1.2.3",
    "/search/?input=x&offset=-1", "/search/?input=x&presentation.format.tensors=bogus",
    "/search/?yql=" + urllib.parse.quote("select * from sources * where " + "(" * 1000 + "true" + ")" * 1000),
    "/search/?yql=" + urllib.parse.quote("select * from sources * where size > 999999999999999999999999"),
    "/search/?yql=" + urllib.parse.quote("select * from sources * where size > 1e400"),
    "/search/?yql=" + urllib.parse.quote("select * from sources * where true limit 99999999999999999999999"),
    "/search/?yql=" + urllib.parse.quote("select * from sources * where {targetHits:99999999999999999999999}"
                                         "nearestNeighbor(tiny_image, q)") + "&input.query(q)=[1]",
    "/search/?yql=" + urllib.parse.quote("select * from sources * where {targetHits:10, distanceThreshold:'x'}"
                                         "nearestNeighbor(tiny_image, q)") + "&input.query(q)=[1]",
    "/search/?yql=" + urllib.parse.quote("select * from sources * where {targetHits:10}nearestNeighbor(tiny_image,"
                                         " q)") + "&input.query(q)=" + urllib.parse.quote("{{x:99999999999}:1.0}"),
    "/search/?yql=" + urllib.parse.quote("select * from sources * where {targetHits:10}nearestNeighbor(tiny_image,"
                                         " q)") + "&input.query(q)=" + "[" * 5000 + "]" * 5000,
    DOC + "?cluster=image_search&continuation=99999999999999999999999",
    DOC + "?cluster=image_search&slices=99999999999999999999999",
    DOC + "?cluster=image_search&wantedDocumentCount=1e9", DOC + "?cluster=image_search&format.tensors=bogus",
    DOC + "x?format.tensors=bogus", DOC + "a%00b", DOC + "x" * 5000,
    "/api/thumbnails/x?size=%C2%B2", "/api/thumbnails/x?size=99999999999999999999",
    "/api/search?q=x&k=1e400", "/api/images/" + "x" * 5000, "/api/images/a%00b",
    "/api/search?q=x&min_width=99999999999999999999999", "/api/search?q=x&min_height=-99999999999999999999999",
]


@pytest.mark.parametrize("path", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_requests_get_a_4xx_not_a_500(served, path):
    port, _, _, _, _ = served
    status, data = call(port, "GET", path)
    assert 400 <= status < 500, (status, data)


def test_yql_far_too_long_is_refused(served):
    port, _, _, _, _ = served
    yql = "select * from sources * where " + " or ".join(["true"] * 300_000)
    status, data = call(port, "POST", "/search/", json.dumps({"yql": yql}), JSON_TYPE)
    assert status == 400 and "at most 100,000" in json.dumps(data)


def test_bodies_are_bounded_as_sent_and_as_decompressed(served):
    port, _, _, _, _ = served
    bomb = gzip.compress(b'{"fields": {"image_file_name": "' + b"a" * (64 * 1024 * 1024) + b'"}}')
    assert len(bomb) < 1024 * 1024
    status, data = call(port, "POST", DOC + "bomb", bomb, {**JSON_TYPE, "Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in data["message"]
    status, _ = call(port, "POST", "/search/", bomb, {**JSON_TYPE, "Content-Encoding": "gzip"})
    assert status == 413
    status, _ = call(port, "POST", DOC + "big", b"x", {**JSON_TYPE, "Content-Length": str(10 ** 12)})
    assert status == 413

    def chunks():  # no Content-Length: only the bytes read can stop it
        for _ in range(40):
            yield b" " * (1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", DOC + "chunked", body=chunks(), headers={**JSON_TYPE, "Transfer-Encoding": "chunked"},
                     encode_chunked=True)
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while still sending
    finally:
        conn.close()
    assert call(port, "GET", "/ApplicationStatus")[0] == 200


def test_a_token_is_required_and_compared_as_bytes(tmp_path):
    Collection.create(tmp_path / "c").close()
    with running_server(tmp_path / "c", tmp_path, "--model", "tiny", "--token", "s3cret-ü") as (url, port):
        for path in ("/ApplicationStatus", "/search/?input=x", DOC + "x", "/api/info", "/api/images/x"):
            assert call(port, "GET", path)[0] == 401, path
        assert call(port, "GET", "/", headers={"Accept": "text/html"})[0] == 200  # the page holds no data
        for header in ("Bearer wrong", "Bearer s3cret-\u00fc", "Bearer s3cret-ü".encode().decode("latin-1")):
            status, _ = call(port, "GET", "/api/info", headers={"Authorization": header.encode("latin-1")})
            assert status == (200 if header.encode("latin-1") == "Bearer s3cret-ü".encode() else 401), header
        assert call(port, "GET", "/api/info?token=" + urllib.parse.quote("s3cret-ü"))[0] == 200  # bytes, as sent
        assert call(port, "GET", "/api/info?token=" + urllib.parse.quote("s3cret-u"))[0] == 401
        assert call(port, "GET", "/api/info?token=s3cret-%FC")[0] == 401  # the Latin-1 spelling is other bytes
        # with a token the Host is not checked: a rebinding page has no token to send
        status, _ = call(port, "GET", "/api/info", headers={"Host": "anything.example",
                                                            "Authorization": "Bearer s3cret-ü".encode()})
        assert status == 200


def test_the_server_keeps_the_gallery_when_the_indexed_folder_moves(tmp_path):
    """Moving an indexed folder stops serving its files (not under an indexed root any more) until re-indexed."""
    gallery = synth.write_dataset(tmp_path / "g", 5, seed=402)
    coll_dir = tmp_path / "c"
    cli = [sys.executable, "-m", "clipseek.cli", "index", "--collection", str(coll_dir), "--model", "tiny"]
    subprocess.run([*cli, str(gallery / "images")], check=True, env=env_for(tmp_path), capture_output=True)
    with Collection.open(coll_dir, readonly=True) as coll:
        docid = next(coll.iter_documents(with_vectors=False)).docid
    shutil.move(str(gallery), str(tmp_path / "moved"))
    os.symlink(tmp_path / "moved", gallery)  # the old path still resolves, to a folder never indexed
    with running_server(coll_dir, tmp_path, "--model", "tiny") as (_, port):
        assert call(port, "GET", f"/api/images/{docid}")[0] == 404


def test_gunzip_stops_at_its_cap_without_inflating_the_rest():
    """A 64 MB bomb against a 1 MB cap: refused after producing about the cap, not after inflating it all."""
    import tracemalloc

    from clipseek.errors import TooLargeError
    from clipseek.server.bodies import gunzip

    bomb = gzip.compress(b"a" * (64 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(TooLargeError, match="decompressed"):
            gunzip(bomb, limit=1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak
    assert gunzip(gzip.compress(b"{}"), limit=1024) == b"{}"
