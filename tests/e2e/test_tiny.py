"""The bundled tiny CLIP proves retrieval quality end to end — and goes red when the pipeline is broken."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipseek import load_model
from clipseek.cli import main

from ..retrieval import read_captions, recall_at, text_to_image

SEED = 4242  # never used for training (training renders come from seed 0's stream)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(main, ["synth", str(out), "--n", "300", "--seed", str(SEED)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def embedded(synth_set, tiny):
    names = sorted(p.name for p in (synth_set / "images").iterdir())
    vectors = tiny.embed_images([synth_set / "images" / n for n in names])
    pairs = read_captions(synth_set)
    return names, vectors, pairs


def test_synth_layout(synth_set):
    images = sorted((synth_set / "images").iterdir())
    pairs = read_captions(synth_set)
    assert len(images) == 300 and len(pairs) == 1500
    assert {n for n, _ in pairs} == {p.name for p in images}
    with Image.open(images[0]) as img:
        assert img.mode == "RGB" and img.size == (128, 128)
    by_image: dict[str, list[str]] = {}
    for n, c in pairs:
        by_image.setdefault(n, []).append(c)
    assert all(len(set(cs)) == 5 for cs in by_image.values())  # five different phrasings
    assert len({c for _, c in pairs}) == 1500  # no caption fits two images


def test_synth_is_reproducible(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert CliRunner().invoke(main, ["synth", str(out), "--n", "5", "--seed", str(seed)]).exit_code == 0
    assert (a / "captions.txt").read_text() == (b / "captions.txt").read_text()
    assert (a / "captions.txt").read_text() != (c / "captions.txt").read_text()


def test_tiny_is_registered_as_a_test_model():
    result = CliRunner().invoke(main, ["models"])
    line = next(row for row in result.output.splitlines() if row.startswith("tiny"))
    assert "test" in line and "bundled" in line


def test_tiny_retrieves_the_right_image(embedded, tiny, tmp_path):
    names, vectors, pairs = embedded
    captions = [c for _, c in pairs]
    ranked = text_to_image(vectors, names, tiny.embed_texts(captions), tmp_path / "c")
    relevant = [n for n, _ in pairs]
    r1, r5 = recall_at(ranked, relevant, 1), recall_at(ranked, relevant, 5)
    assert r1 >= 0.85 and r5 >= 0.97, (r1, r5)


def test_swapped_colour_channels_break_retrieval(embedded, tiny, synth_set, tmp_path):
    names, _vectors, pairs = embedded
    pixels = np.stack([tiny.preprocess(synth_set / "images" / n) for n in names])
    broken = tiny.embed_pixels(np.ascontiguousarray(pixels[:, ::-1]))  # BGR instead of RGB
    ranked = text_to_image(broken, names, tiny.embed_texts([c for _, c in pairs]), tmp_path / "c")
    assert recall_at(ranked, [n for n, _ in pairs], 1) < 0.5


def test_missing_end_of_text_token_breaks_retrieval(embedded, tiny, tmp_path):
    names, vectors, pairs = embedded
    tokens = tiny.tokenizer([c for _, c in pairs])
    tokens[tokens == tiny.tokenizer.eot_token_id] = 0  # pooling then lands on a word, not on end-of-text
    ranked = text_to_image(vectors, names, tiny.embed_tokens(tokens), tmp_path / "c")
    assert recall_at(ranked, [n for n, _ in pairs], 1) < 0.5
