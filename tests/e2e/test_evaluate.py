from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipseek.cli import main
from clipseek.evaluate import DatasetError, load_dataset, metrics, ranks


def test_ranks_are_pessimistic_on_ties():
    scores = np.array([[0.9, 0.5, 0.9],   # relevant 0 ties with 2 → rank 2
                       [0.1, 0.2, 0.3],   # relevant 2 best → 1
                       [0.4, 0.4, 0.4]])  # all tied → 3
    assert ranks(scores, np.array([0, 2, 1])).tolist() == [2, 1, 3]


def test_metrics_hand_computed():
    # 3 images (unit axes), 4 captions; caption i's relevant image and its rank:
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0.8, 0, 0.6]], dtype=np.float32)
    relevant = np.array([0, 0, 2, 2])  # ranks: 1, 2 (image1 .8 > .6), 1, 2 (image0 .8 > .6)
    m = metrics("m", texts, images, relevant)
    assert m.recall == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0}
    assert m.mrr_at_100 == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)
    assert (m.median_rank, m.mean_rank) == (1.5, 1.5)
    # image→text: image0's best caption (0) ranks 1st; image2's best (2) ranks 1st; image1 has no caption
    assert m.image_to_text_recall["R@1"] == 1.0


def make_set(root, lines, split_lines=None, images=("a.jpg", "b.jpg", "c.jpg")):
    (root / "images").mkdir(parents=True)
    for name in images:
        Image.new("RGB", (8, 8)).save(root / "images" / name)
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    if split_lines is not None:
        (root / "Flickr_8k.testImages.txt").write_text("\n".join(split_lines) + "\n")
    return root


def test_bad_input_is_counted_not_hidden(tmp_path):
    root = make_set(tmp_path / "d", [
        "a.jpg\ta red thing", "a.jpg\ta red thing", "b.jpg\t   ", "no tab here", "gone.jpg\tmissing image",
        "c.jpg\tcee", "b.jpg\tbee",
    ], split_lines=["a.jpg", "b.jpg", "c.jpg", "unknown.jpg", "gone.jpg"])
    data = load_dataset(root, "test")
    assert data.queries == [("a.jpg", "a red thing"), ("c.jpg", "cee"), ("b.jpg", "bee")]
    assert data.images == ["a.jpg", "b.jpg", "c.jpg"]
    assert dict(data.dropped) == {"duplicate caption line": 1, "empty caption": 1,
                                  "line without a tab between image and caption": 1,
                                  "caption names an image missing from images/": 1,
                                  "split lists an image that is not in images/": 2}


def test_flickr_token_file_and_empty_folder(tmp_path):
    root = tmp_path / "t"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "x.jpg")
    (root / "Flickr8k.token.txt").write_text("x.jpg#0\tone\nx.jpg#1\ttwo\n")
    assert load_dataset(root, "all").queries == [("x.jpg", "one"), ("x.jpg", "two")]
    empty = tmp_path / "e"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(empty)
    (root / "captions.txt").write_bytes("x.jpg\tun caf\u00e9 ferm\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"captions\.txt is not UTF-8 text .*save it as UTF-8"):
        load_dataset(root, "all")


def test_eval_tiny_on_fresh_synth_reaches_the_quality_bar(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["synth", str(tmp_path / "s"), "--n", "500", "--seed", "2027"]).exit_code == 0
    result = runner.invoke(main, ["eval", "--data", str(tmp_path / "s"), "--model", "tiny", "--out",
                                  str(tmp_path / "out"), "--json", "--approximate"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    m = doc["models"][0]
    assert doc["queries"] == 2500 and doc["dropped"] == {}
    assert m["recall"]["R@1"] >= 0.80 and m["recall"]["R@5"] >= 0.95 and m["ann_recall_vs_exact"] >= 0.95
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "results.csv", "results.png"}
    with Image.open(tmp_path / "out" / "results.png") as img:
        assert img.size[0] > 500
    again = runner.invoke(main, ["eval", "--data", str(tmp_path / "s"), "--model", "tiny", "--out",
                                 str(tmp_path / "out2"), "--json"])
    assert json.loads(again.stdout)["models"][0]["recall"] == m["recall"]  # cached vectors, same numbers


def test_eval_on_flickr8k_test_split_writes_everything(flickr, tmp_path):
    result = CliRunner().invoke(main, ["eval", "--data", str(flickr), "--split", "test", "--model", "tiny",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1000 images, 4999 captions" in result.output and "dropped 1: duplicate caption line" in result.output
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("model,queries,R@1") and rows[1].startswith("tiny,4999,")
