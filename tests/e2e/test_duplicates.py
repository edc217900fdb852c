"""Near-duplicate groups on real photos with generated copies; which to keep; collapsing search results."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from clipseek.cli import main
from clipseek.collection import Collection
from clipseek.duplicates import DEFAULT_THRESHOLD, find_groups
from clipseek.indexer import Indexer
from clipseek.models import load_model

from ..dupset import make_set, precision_recall


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def index(folder, coll_path, tiny):
    with Collection.open(coll_path, create=True) as coll:
        Indexer(coll, tiny).run([folder])


@pytest.mark.parametrize("seed", [11, 12])
def test_copies_are_grouped_and_distinct_photos_are_not(flickr, tmp_path, tiny, seed):
    truth = make_set(flickr / "images", tmp_path / "photos", 60, seed)
    index(tmp_path / "photos", tmp_path / "c", tiny)
    with Collection.open(tmp_path / "c", readonly=True) as coll:
        groups = find_groups(coll, "tiny_image")
    named = [[os.path.basename(g.paths[d]) for d in g.members] for g in groups]
    precision, recall, found, true = precision_recall(named, truth)
    assert true > 30  # the set has copies to find
    assert precision >= 0.95 and recall >= 0.9, (precision, recall, found, true)


def test_the_one_to_keep_is_the_largest_then_sharpest_then_oldest(flickr, tmp_path, tiny):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.open(sorted((flickr / "images").iterdir())[5]).convert("RGB").resize((448, 448))
    photo.resize((224, 224)).save(folder / "a_small.jpg", quality=92)
    photo.filter(ImageFilter.GaussianBlur(1.5)).save(folder / "b_blurred.jpg", quality=92)
    photo.save(folder / "c_original.jpg", quality=92)
    photo.save(folder / "d_later_copy.jpg", quality=92)
    os.utime(folder / "c_original.jpg", (1_500_000_000, 1_500_000_000))
    os.utime(folder / "d_later_copy.jpg", (1_600_000_000, 1_600_000_000))
    index(folder, tmp_path / "c", tiny)
    with Collection.open(tmp_path / "c", readonly=True) as coll:
        groups = find_groups(coll, "tiny_image")
    assert len(groups) == 1
    order = [os.path.basename(groups[0].paths[d]) for d in groups[0].members]
    assert order[0] == "c_original.jpg" and set(order) == {"a_small.jpg", "b_blurred.jpg", "c_original.jpg",
                                                           "d_later_copy.jpg"}
    assert order.index("d_later_copy.jpg") < order.index("b_blurred.jpg") < order.index("a_small.jpg")

    out = CliRunner().invoke(main, ["duplicates", "--collection", str(tmp_path / "c"), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc[0]["keep"].endswith("c_original.jpg") and len(doc[0]["duplicates"]) == 3
    assert all(d["score"] >= DEFAULT_THRESHOLD for d in doc[0]["duplicates"])
    text = CliRunner().invoke(main, ["duplicates", "--collection", str(tmp_path / "c")])
    assert "1 groups, 3 copies" in text.output and "keep   " + str(folder / "c_original.jpg") in text.output


@pytest.fixture(scope="module")
def burst_library(flickr, tmp_path_factory, tiny):
    """Six distinct photos, the first with two copies: a search by the first returns its copies first."""
    base = tmp_path_factory.mktemp("burst")
    folder = base / "photos"
    folder.mkdir()
    names = sorted((flickr / "images").iterdir())[100:106]
    for i, p in enumerate(names):
        img = Image.open(p).convert("RGB")
        img.save(folder / f"p{i}.jpg", quality=95)
        if i == 0:
            img.resize((150, 150)).save(folder / "p0_small.jpg", quality=80)
            img.save(folder / "p0_again.jpg", quality=40)
    index(folder, base / "c", tiny)
    return base, folder


def test_search_collapse_shows_one_of_each_group(burst_library):
    base, folder = burst_library
    runner = CliRunner()

    def paths(*extra):
        out = runner.invoke(main, ["search", "--image", str(folder / "p0.jpg"), "--collection", str(base / "c"),
                                   "--paths-only", "-k", "4", *extra])
        assert out.exit_code == 0, out.output
        return [os.path.basename(p) for p in out.output.splitlines()]

    plain, collapsed = paths(), paths("--collapse")
    assert {"p0.jpg", "p0_small.jpg", "p0_again.jpg"} <= set(plain)
    assert len(collapsed) == 4 and collapsed[0] == "p0.jpg"
    assert not {"p0_small.jpg", "p0_again.jpg"} & set(collapsed)


def test_native_api_collapse_reads_only_what_it_serves(burst_library):
    from ..serving import running_server

    base, folder = burst_library
    with running_server(base / "c", base, "--model", "tiny") as (url, _port):
        def get(collapse):
            with urllib.request.urlopen(f"{url}/api/search?q=a+dog&k=9&collapse={collapse}", timeout=30) as r:
                return [os.path.basename(h["path"]) for h in json.loads(r.read())["hits"]]

        every, collapsed = get("false"), get("true")
        assert len(every) == 8 and len(collapsed) == 6
        assert sum(n.startswith("p0") for n in collapsed) == 1
        with pytest.raises(urllib.error.HTTPError) as info:
            get("maybe")
        assert info.value.code == 400
