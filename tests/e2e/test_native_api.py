"""The native JSON API in-process (Starlette's TestClient over the real app and a real collection)."""

from __future__ import annotations

import hashlib
import io

import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from clipseek import load_model, synth
from clipseek.cli import main
from clipseek.collection import Collection
from clipseek.indexer import Indexer
from clipseek.server import create_app

from ..imagegen import save_exif_rotated


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("native")
    gallery = synth.write_dataset(base / "g", 60, seed=81)
    upright = Image.new("RGB", (300, 200), "white")
    upright.paste((200, 20, 20), (0, 0, 100, 200))
    save_exif_rotated(upright, gallery / "images" / "rotated.jpg", 6)
    (base / "outside.png").write_bytes((gallery / "images" / "synth_81_00000.png").read_bytes())
    coll_dir = base / "c"
    tiny = load_model("tiny")
    with Collection.create(coll_dir) as coll:
        Indexer(coll, tiny).run([gallery / "images"])
        ids = {d.image_file_name: d.docid for d in coll.iter_documents(with_vectors=False)}
    captions = [line.split("\t", 1) for line in (gallery / "captions.txt").read_text().splitlines()]
    app = create_app(coll_dir, encoders=lambda _m: tiny, default_model="tiny", allow_hosts=["testserver"])
    with TestClient(app) as client:
        yield client, ids, captions, gallery, coll_dir


def assert_error(resp, status):
    assert resp.status_code == status
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "type", "message"}
    assert body["error"]["status"] == status and body["error"]["message"]
    return body["error"]


def test_text_search_and_hit_shape(setup):
    client, ids, captions, _, _ = setup
    name, caption = captions[12]
    body = client.get("/api/search", params={"q": caption, "k": 5}).json()
    assert body["model"] == "tiny" and body["documents"] == 61 and len(body["hits"]) == 5
    assert name in [h["image_file_name"] for h in body["hits"]]
    hit = body["hits"][0]
    assert hit["url"] == f"/api/images/{hit['id']}" and hit["thumbnail"] == f"/api/thumbnails/{hit['id']}"
    assert [h["relevance"] for h in body["hits"]] == sorted((h["relevance"] for h in body["hits"]), reverse=True)
    page2 = client.get("/api/search", params={"q": caption, "k": 5, "offset": 5}).json()
    assert not {h["id"] for h in page2["hits"]} & {h["id"] for h in body["hits"]}
    strict = client.get("/api/search", params={"q": caption, "k": 5, "threshold": 0.99}).json()
    assert strict["hits"] == []
    # a relevance copied from the answer as the threshold keeps its own hit (compared as printed)
    scores = [h["relevance"] for h in client.get("/api/search", params={"q": caption, "k": 40}).json()["hits"]]
    for cut in scores[1::4]:
        kept = client.get("/api/search", params={"q": caption, "k": 40, "threshold": cut}).json()["hits"]
        assert len(kept) == sum(s >= cut for s in scores) and 0 < len(kept) < len(scores), cut


def test_more_like_this_upload_and_weighted_terms(setup):
    client, ids, captions, gallery, _ = setup
    target = ids["synth_81_00007.png"]
    like = client.get("/api/search", params={"like": target, "k": 1}).json()
    assert like["hits"][0]["id"] == target
    data = (gallery / "images" / "synth_81_00007.png").read_bytes()
    up = client.post("/api/search", files={"image": ("x.png", data, "image/png")}, data={"k": "1"}).json()
    assert up["hits"][0]["id"] == target
    mixed = client.post("/api/search", files={"image": ("x.png", data, "image/png")},
                        data={"k": "3", "q": "a shape", "not": "a black background"})
    assert mixed.status_code == 200 and len(mixed.json()["hits"]) == 3
    name, caption = captions[20]
    combo = client.post("/api/search", json={"terms": [{"text": caption, "weight": 2}, {"id": ids[name]},
                                                       {"text": "a black background", "weight": -0.3}], "k": 3})
    assert combo.status_code == 200 and combo.json()["hits"][0]["id"] == ids[name]
    filtered = client.get("/api/search", params={"q": "a shape", "format": "JPEG", "k": 10}).json()
    assert [h["image_file_name"] for h in filtered["hits"]] == ["rotated.jpg"]


def test_errors_share_one_shape(setup):
    client, *_ = setup
    assert_error(client.post("/api/search", json={"terms": []}), 400)
    assert_error(client.post("/api/search", json={"terms": [{"text": "x", "weight": 1e308}]}), 400)
    assert_error(client.post("/api/search", content=b"not an image", headers={"content-type": "image/png"}), 400)
    assert_error(client.get("/api/search", params={"q": "x", "k": "lots"}), 400)
    assert_error(client.get("/api/search", params={"q": "x", "model": "RN50"}), 400)
    assert_error(client.get("/api/search", params={"like": "nope"}), 400)
    assert_error(client.get("/api/thumbnails/whatever", params={"size": "99"}), 400)
    # JSON of the wrong shape (found by the fuzz test): each a 400 naming the field
    for body, field in (({"terms": True}, "terms"), ({"q": {"a": 1}}, "q"), ({"terms": [{"text": ["x"]}]}, "text"),
                        ({"q": "x", "folder": [1]}, "folder"), ({"q": "x", "format": {"a": 1}}, "format"),
                        ({"q": "x", "model": ["tiny"]}, "model"), ({"q": "x", "k": True}, "k")):
        assert field in assert_error(client.post("/api/search", json=body), 400)["message"]
    assert_error(client.get("/api/search", params={"q": "x", "since": "inf"}), 400)
    listed = client.post("/api/search", json={"q": "a shape", "format": ["JPEG"], "k": 10})
    assert [h["image_file_name"] for h in listed.json()["hits"]] == ["rotated.jpg"]


def test_originals_and_thumbnails_only_of_indexed_documents(setup):
    client, ids, _, gallery, coll_dir = setup
    doc = ids["synth_81_00003.png"]
    resp = client.get(f"/api/images/{doc}")
    assert resp.status_code == 200 and resp.content == (gallery / "images" / "synth_81_00003.png").read_bytes()
    thumb = client.get(f"/api/thumbnails/{ids['rotated.jpg']}", params={"size": 128})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(thumb.content))
    assert img.size == (128, 85)  # upright landscape, EXIF applied
    assert img.getpixel((10, 40))[0] > 150 and img.getpixel((10, 40))[1] < 90
    key = hashlib.sha256(ids["rotated.jpg"].encode()).hexdigest()[:32]  # ids never name files
    assert (coll_dir / "thumbnails" / f"{key}-128.jpg").is_file()
    for attempt in ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%2Fetc%2Fpasswd", "..", str(gallery.parent / "outside.png")]:
        for route in ("images", "thumbnails"):
            assert client.get(f"/api/{route}/{attempt}").status_code == 404, (route, attempt)


def test_token_is_checked_on_every_route(setup, tmp_path):
    _, _, _, _, coll_dir = setup
    tiny = load_model("tiny")
    with TestClient(create_app(coll_dir, encoders=lambda _m: tiny, token="s3cret")) as client:
        paths = ("/api/info", "/search/?input=x", "/document/v1/default/image_search/docid/x", "/ApplicationStatus")
        for path in paths:
            assert_error(client.get(path), 401)
        assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/api/info", params={"token": "s3cret"}).status_code == 200
        assert client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--collection", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--token" in result.output
