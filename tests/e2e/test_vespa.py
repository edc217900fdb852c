"""Export to a Vespa application package (schema, services, embedder, query profile), deploy's refusals, and
`clipseek vespa feed` against a real `clipseek serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from clipseek import load_model
from clipseek.cli import main
from clipseek.collection import Collection, Document
from clipseek.errors import VespaDeployError
from clipseek.vespa.deploy import deploy_package, docker_problem
from clipseek.vespa.embedder import build_tokenizer

from ..conftest import flickr_captions, indexed_gallery, missing, need_module
from ..serving import env_for, running_server
from ..unit.test_tokenizer import EDGE_CASES
from ..vespa_embedder import PackageEmbedder

need_module("vespa.application")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return indexed_gallery(tmp_path_factory.mktemp("vespa"), 30, seed=111)[1]


@pytest.fixture(scope="module")
def package(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "app"
    result = CliRunner().invoke(main, ["vespa", "export", str(out), "--collection", str(source)])
    assert result.exit_code == 0, result.output
    return out


def test_export_writes_the_sample_app_schema(source, tmp_path):
    result = CliRunner().invoke(main, ["vespa", "export", str(tmp_path / "app"), "--collection", str(source),
                                       "--nodes", "2", "--redundancy", "2", "--no-embedders"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "app" / "models").exists()
    sd = (tmp_path / "app" / "schemas" / "image_search.sd").read_text()
    assert re.search(r"field image_file_name type string \{\s+indexing: attribute \| summary", sd)
    field = re.search(r"field tiny_image type tensor<float>\(x\[96\]\) \{(.*?)\n        \}", sd, re.S).group(1)
    assert "distance-metric: angular" in field and "indexing: attribute | index" in field
    assert "max-links-per-node: 16" in field and "neighbors-to-explore-at-insert: 500" in field
    profile = re.search(r"rank-profile tiny_similarity inherits default \{(.*?)\n    \}", sd, re.S).group(1)
    assert "query(tiny_text) tensor<float>(x[96])" in profile and "expression: closeness(field, tiny_image)" in profile
    assert sd.count("{") == sd.count("}")
    services = (tmp_path / "app" / "services.xml").read_text()
    import xml.etree.ElementTree as ET
    root = ET.fromstring(services)
    assert root.find("container/search") is not None and root.find("container/document-api") is not None
    assert root.find("content/min-redundancy").text == "2"
    assert root.find("content/documents/document").get("type") == "image_search"
    # two self-hosted nodes: named hosts, not a count (which self-hosted Vespa reads as one node)
    assert [(n.get("hostalias"), n.get("distribution-key")) for n in root.findall("content/nodes/node")] == [
        ("node0", "0"), ("node1", "1")]
    assert root.find("content/nodes").get("count") is None
    hosts = ET.parse(tmp_path / "app" / "hosts.xml").getroot()
    assert [(h.get("name"), h.find("alias").text) for h in hosts.findall("host")] == [
        ("node0.example.internal", "node0"), ("node1.example.internal", "node1")]
    assert not (tmp_path / "app" / "validation-overrides.xml").exists()


def test_export_for_vespa_cloud_and_for_named_hosts(source, tmp_path):
    import datetime
    import xml.etree.ElementTree as ET

    def export(name, *args):
        return CliRunner().invoke(main, ["vespa", "export", str(tmp_path / name), "--collection", str(source),
                                         "--no-embedders", *args])
    result = export("cloud", "--nodes", "3", "--cloud", "--validation-override", "redundancy-one")
    assert result.exit_code == 0, result.output
    root = ET.parse(tmp_path / "cloud" / "services.xml").getroot()
    assert root.find("content/nodes").get("count") == "3" and root.find("container/nodes").get("count") == "3"
    assert root.find("admin") is None and not (tmp_path / "cloud" / "hosts.xml").exists()
    overrides = ET.parse(tmp_path / "cloud" / "validation-overrides.xml").getroot()
    (allow,) = overrides.findall("allow")
    until = datetime.date.fromisoformat(allow.get("until"))
    assert allow.text == "redundancy-one" and 0 < (until - datetime.date.today()).days <= 30
    (tmp_path / "hosts.txt").write_text("a.example.com\nb.example.com\n\nc.example.com\n")
    result = export("named", "--nodes", "3", "--redundancy", "2", "--hosts", str(tmp_path / "hosts.txt"))
    assert result.exit_code == 0, result.output
    root = ET.parse(tmp_path / "named" / "services.xml").getroot()
    assert [n.get("hostalias") for n in root.findall("container/nodes/node")] == ["node0", "node1", "node2"]
    assert [c.get("hostalias") for c in root.findall("admin/configservers/configserver")] == ["node0", "node1", "node2"]
    hosts = ET.parse(tmp_path / "named" / "hosts.xml").getroot()
    assert [h.get("name") for h in hosts.findall("host")] == ["a.example.com", "b.example.com", "c.example.com"]
    result = export("wrong", "--nodes", "2", "--hosts", str(tmp_path / "hosts.txt"))
    assert result.exit_code == 1 and "names 3 machines but the cluster has 2" in result.output
    result = export("one", "--nodes", "1")
    root = ET.parse(tmp_path / "one" / "services.xml").getroot()
    assert root.find("content/nodes").get("count") == "1" and not (tmp_path / "one" / "hosts.xml").exists()


def test_feed_copies_collection_a_into_served_collection_b(source, tmp_path):
    with running_server(tmp_path / "b", tmp_path) as (url, _port):
        for _ in range(2):  # the second run is a no-op in effect: puts are idempotent
            result = subprocess.run([sys.executable, "-m", "clipseek.cli", "vespa", "feed", "--url", url,
                                     "--collection", str(source)], env=env_for(tmp_path), capture_output=True,
                                    text=True)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "30 fed, 0 failed" in result.stdout
    with Collection.open(source, readonly=True) as a, Collection.open(tmp_path / "b", readonly=True) as b:
        docs_a = {d.docid: d for d in a.iter_documents()}
        docs_b = {d.docid: d for d in b.iter_documents()}
        assert docs_a.keys() == docs_b.keys() and len(docs_b) == 30
        for docid, da in docs_a.items():
            db = docs_b[docid]
            assert da.attributes() == db.attributes()
            np.testing.assert_array_equal(da.vectors["tiny_image"], db.vectors["tiny_image"])


def test_export_configures_an_embedder_and_a_query_profile_per_model(package):
    import xml.etree.ElementTree as ET
    root = ET.parse(package / "services.xml").getroot()
    comps = root.findall("container/component")
    assert [(c.get("id"), c.get("type")) for c in comps] == [("tiny", "hugging-face-embedder")]
    config = {child.tag: child for child in comps[0]}
    assert config["transformer-model"].get("path") == "models/tiny_text.onnx"
    assert config["tokenizer-model"].get("path") == "models/clip-bpe-tokenizer.json"
    assert config["pooling-strategy"].text == "cls" and config["max-tokens"].text == "77"
    for rel in ("models/tiny_text.onnx", "models/clip-bpe-tokenizer.json"):
        assert (package / rel).stat().st_size > 1000
    profile = ET.parse(package / "search" / "query-profiles" / "default.xml").getroot()
    assert profile.get("id") == "default"
    fields = {f.get("name"): f.text for f in profile.findall("field")}
    # the rank profile's input, under its full name (query profiles take no aliases), embedded by that model
    assert fields == {"ranking.features.query(tiny_text)": "embed(tiny, @input)"}
    # one profile per model: what queryProfile=tiny means on Vespa is what clipseek serve does with it
    from clipseek.query import profile_yql
    tiny = ET.parse(package / "search" / "query-profiles" / "tiny.xml").getroot()
    assert tiny.get("id") == "tiny"
    assert {f.get("name"): f.text for f in tiny.findall("field")} == {
        "ranking.profile": "tiny_similarity", "yql": profile_yql("tiny"),
        "ranking.features.query(tiny_text)": "embed(tiny, @input)"}
    assert profile_yql("tiny") == ("select * from image_search where {targetHits:100}"
                                   "nearestNeighbor(tiny_image, tiny_text)")
    sd = (package / "schemas" / "image_search.sd").read_text()
    assert "query(tiny_text) tensor<float>(x[96])" in sd


def test_package_embedder_gives_clipseek_text_vectors(package, source, flickr):
    """Vespa's way of embedding (tokenizer.json, the configured names, one unpadded text, cls pooling) = ours."""
    captions = flickr_captions(flickr)[::400][:100]
    assert len(captions) == 100
    emb = PackageEmbedder(package, "tiny")
    ours = load_model("tiny")
    for text in captions:
        row = ours.tokenizer([text])[0]
        assert emb.token_ids(text) == [int(i) for i in row[: int(ours.tokenizer.lengths(row[None])[0])]]
    got, expected = emb.embed(captions), ours.embed_texts(captions)
    assert float((got * expected).sum(axis=1).min()) >= 0.9999
    # and the same hits come back for a query embedded either way: each with the same relevance, within what the
    # two vectors' distance allows (two hits that close may trade places, or places at the cut)
    with Collection.open(source, readonly=True) as coll:
        for vec, ref in zip(got[:5], expected[:5]):
            a = coll.search(vec, field="tiny_image", hits=5).hits
            b = {h.docid: h.relevance for h in coll.search(ref, field="tiny_image", hits=5).hits}
            tol = 2 * float(np.linalg.norm(vec / np.linalg.norm(vec) - ref / np.linalg.norm(ref))) + 1e-6
            for hit in a:
                assert abs(hit.relevance - b.get(hit.docid, a[-1].relevance)) <= tol, (hit, b)


def test_tokenizer_file_matches_clipseek_on_flickr8k(flickr):
    """All 40,455 captions tokenize identically; only texts that need ftfy's repairs differ (documented)."""
    tok = build_tokenizer()
    ours = load_model("tiny").tokenizer
    texts = flickr_captions(flickr) + EDGE_CASES + ["A &amp; B &lt;tag&gt;", "say &quot;hi&quot; it&#39;s"]
    rows = ours(texts)
    lengths = ours.lengths(rows)
    differ = [t for t, enc, row, n in zip(texts, tok.encode_batch(texts), rows, lengths)
              if enc.ids != [int(i) for i in row[:n]] and "<end_of_text>" not in t]
    assert sorted(differ) == sorted(["mojibake Ã©", "ﬁ ligature"])


def test_deploy_says_what_to_do_when_there_is_nowhere_to_deploy(package, tmp_path):
    if docker_problem() is None:
        pytest.skip("a Docker engine answers here: deploy would really start Vespa")
    with pytest.raises(VespaDeployError, match=r"Start Docker .* --tenant T --application A .*vespa deploy"):
        deploy_package(package)
    result = CliRunner().invoke(main, ["vespa", "deploy", str(package), "--docker"])
    assert result.exit_code == 1 and "cannot deploy to Docker" in result.output
    result = CliRunner().invoke(main, ["vespa", "deploy", str(tmp_path)])
    assert result.exit_code == 1 and f"clipseek vespa export {tmp_path}" in result.output
    result = CliRunner().invoke(main, ["vespa", "deploy", str(package), "--tenant", "My_Tenant", "--application", "a"])
    assert result.exit_code == 1 and "--tenant 'My_Tenant' is not a Vespa Cloud name" in result.output
    result = CliRunner().invoke(main, ["vespa", "deploy", str(package), "--cloud", "--tenant", "t"])
    assert result.exit_code == 1 and "needs both --tenant and --application" in result.output


def test_feed_keeps_each_documents_namespace(tmp_path):
    with Collection.create(tmp_path / "a") as a:
        a.add_field("tiny_image", "tiny", 96)
        a.feed([Document("mine", vectors={"tiny_image": np.ones(96)}),
                Document("theirs", namespace="photos", vectors={"tiny_image": -np.ones(96)})])
    with running_server(tmp_path / "b", tmp_path) as (url, _port):
        result = subprocess.run([sys.executable, "-m", "clipseek.cli", "vespa", "feed", "--url", url,
                                 "--collection", str(tmp_path / "a")], env=env_for(tmp_path), capture_output=True,
                                text=True)
        assert result.returncode == 0 and "2 fed, 0 failed" in result.stdout, result.stdout + result.stderr
    with Collection.open(tmp_path / "b", readonly=True) as b:
        assert b.get("mine").namespace is None and b.get("theirs").namespace == "photos"


OLD_TOKENIZERS = "0.19.1"  # what Vespa bundled (through DJL) until 8.466.24
ENCODE_ALL = """
import json, sys
import tokenizers
from tokenizers import Tokenizer
tk = Tokenizer.from_file(sys.argv[1])
captions = json.load(open(sys.argv[2]))
print(json.dumps({"version": tokenizers.__version__, "ids": [e.ids for e in tk.encode_batch(captions)]}))
"""


def test_the_tokenizer_file_loads_in_every_vespa_8s_tokenizers_with_the_same_ids(package, flickr, tmp_path):
    """Merges written as "a b" strings: tokenizers 0.19.1 (Vespa before 8.466.24) and the current release read
    the file and give the same ids on all 40,455 Flickr8k captions."""
    from tokenizers import Tokenizer

    path = package / "models" / "clip-bpe-tokenizer.json"
    merges = json.loads(path.read_text())["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    target = tmp_path / "old"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
                          "--target", str(target), f"tokenizers=={OLD_TOKENIZERS}"], capture_output=True, text=True)
    if pip.returncode != 0:
        missing(f"tokenizers {OLD_TOKENIZERS} (a throw-away install from PyPI)", pip.stderr[-300:])
    captions = flickr_captions(flickr)
    assert len(captions) == 40_455
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    env = dict(os.environ, PYTHONPATH=str(target))
    old = subprocess.run([sys.executable, "-c", ENCODE_ALL, str(path), str(tmp_path / "captions.json")], env=env,
                         capture_output=True, text=True)
    assert old.returncode == 0, old.stderr[-2000:]
    old_out = json.loads(old.stdout)
    assert old_out["version"] == OLD_TOKENIZERS
    current = [e.ids for e in Tokenizer.from_file(str(path)).encode_batch(captions)]
    assert old_out["ids"] == current
