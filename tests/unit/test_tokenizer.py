from __future__ import annotations

import numpy as np
import pytest

from clipseek.tokenizer import Tokenizer, clean_text

from ..conftest import flickr_captions, need_module

EDGE_CASES = [
    "", "   ", "!!!", "?!.,;:", "😀🐶 dog", "Café naïve résumé", "北京的猫 一只狗", " ".join(["word"] * 500),
    "  leading and trailing  ", "A &amp; B &lt;tag&gt;", "<end_of_text> inside", "<|endoftext|>",
    "It's we'll they'd I'm", "x" * 300, "\t\n tabs\nnewlines\r\n", "mojibake Ã©", "MiXeD CaSe",
    "123 4567 3.14", "ﬁ ligature", "Zwölf Boxkämpfer", "emoji only 🎉🎉🎉", "ÅÄÖ åäö", "naïve\u200bzero width",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_known_ids(tok):
    # ids every CLIP user has seen: <start> a photo of a cat <end>
    assert tok("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert tok.encode("Hello, World!") == [3306, 267, 1002, 256]
    assert tok.vocab_size == 49408


def test_empty_text_is_start_end(tok):
    assert tok([""])[0, :3].tolist() == [49406, 49407, 0]


def test_truncation_keeps_end_token(tok):
    ids = tok(" ".join(["word"] * 500))[0]
    assert ids.shape == (77,) and ids[0] == 49406 and ids[-1] == 49407
    assert (ids[1:-1] != 0).all()


def test_lengths_count_up_to_end_token(tok):
    ids = tok(["a dog", "", "a dog on a red beach"])
    assert tok.lengths(ids).tolist() == [4, 2, 8]


def test_clean_folds_whitespace_and_case():
    assert clean_text("  Hello\t\nWORLD &amp; co ") == "hello world & co"


def test_decode_roundtrip(tok):
    assert tok.decode(tok.encode("a black dog runs")) == "a black dog runs"


@pytest.mark.torch
def test_identical_to_open_clip_on_flickr8k_and_edge_cases(tok, flickr):
    open_clip = need_module("open_clip")
    reference = open_clip.get_tokenizer("ViT-B-32")
    texts = flickr_captions(flickr) + EDGE_CASES
    assert len(texts) == 40455 + len(EDGE_CASES)
    ours = tok(texts)
    theirs = reference(texts).numpy()
    mismatched = [texts[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert mismatched == []
