"""Export to a Vespa application package, and `clipseek vespa feed` against a real `clipseek serve`."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from clipseek import load_model, synth
from clipseek.cli import main
from clipseek.collection import Collection
from clipseek.indexer import Indexer

from .serving import env_for, running_server

pytest.importorskip("vespa.application")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    base = tmp_path_factory.mktemp("vespa")
    gallery = synth.write_dataset(base / "g", 30, seed=111)
    with Collection.create(base / "a") as coll:
        Indexer(coll, load_model("tiny")).run([gallery / "images"])
    return base / "a"


def test_export_writes_the_seed_schema(source, tmp_path):
    result = CliRunner().invoke(main, ["vespa", "export", str(tmp_path / "app"), "--collection", str(source),
                                       "--nodes", "2", "--redundancy", "2"])
    assert result.exit_code == 0, result.output
    sd = (tmp_path / "app" / "schemas" / "image_search.sd").read_text()
    assert re.search(r"field image_file_name type string \{\s+indexing: attribute \| summary", sd)
    field = re.search(r"field tiny_image type tensor<float>\(x\[96\]\) \{(.*?)\n        \}", sd, re.S).group(1)
    assert "distance-metric: angular" in field and "indexing: attribute | index" in field
    assert "max-links-per-node: 16" in field and "neighbors-to-explore-at-insert: 500" in field
    profile = re.search(r"rank-profile tiny_similarity inherits default \{(.*?)\n    \}", sd, re.S).group(1)
    assert "query(tiny_text) tensor<float>(x[96])" in profile and "expression: closeness(tiny_image)" in profile
    assert sd.count("{") == sd.count("}")
    services = (tmp_path / "app" / "services.xml").read_text()
    import xml.etree.ElementTree as ET
    root = ET.fromstring(services)
    assert root.find("container/search") is not None and root.find("container/document-api") is not None
    assert root.find("content/min-redundancy").text == "2" and root.find("content/nodes").get("count") == "2"
    assert root.find("content/documents/document").get("type") == "image_search"


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
