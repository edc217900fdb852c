"""Exported ONNX towers against open_clip's torch model, for real architectures at random init."""

from __future__ import annotations

import numpy as np
import pytest

from clipseek.models import OnnxEncoder, get_spec, load_model
from clipseek.models.loader import export_model

from ..conftest import need_module, scratch
from ..imagegen import photo_like

torch = need_module("torch")
open_clip = need_module("open_clip")
pytestmark = pytest.mark.torch

CAPTIONS = [
    "a black dog runs across the green grass",
    "two children in red shirts play football in a park next to a lake",
    "A man",
    "",
    " ".join(["a very long caption that goes on"] * 20),
]


@pytest.fixture(scope="module", params=["ViT-B/32", "RN50"])
def exported(request, tmp_path_factory):
    spec = get_spec(request.param)
    torch.manual_seed(1234)
    clip = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=spec.quick_gelu).eval()
    for work in scratch(tmp_path_factory, spec.slug):
        yield spec, clip, export_model(clip, spec, work)


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_text_vectors_match_torch(exported):
    spec, clip, folder = exported
    enc = load_model(f"local-dir:{folder}")
    tokens = enc.tokenizer(CAPTIONS)
    with torch.no_grad():
        expected = clip.encode_text(torch.from_numpy(tokens)).numpy()
    got = enc.embed_texts(CAPTIONS)
    assert got.dtype == np.float32 and got.shape == (len(CAPTIONS), spec.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got, expected).min() >= 0.9999


def test_early_exit_equals_full_77_token_run(exported):
    spec, _clip, folder = exported
    enc = OnnxEncoder(folder)
    tokens = enc.tokenizer(CAPTIONS[:3])
    full = enc._encode_tokens(tokens)  # the fixed 77 tokens of open_clip (and Vespa's text-image sample app)
    cut_len = int(enc.tokenizer.lengths(tokens).max())
    assert cut_len < 20
    cut = enc._encode_tokens(np.ascontiguousarray(tokens[:, :cut_len]))
    assert cosines(cut, full).min() >= 0.9999
    # and the public path really cuts: what reaches the text tower's runtime is [3, cut_len], not [3, 77]
    run, seen = enc._run["text"], []

    def recording(tokens):
        seen.append(tokens.shape)
        return run(tokens)
    enc._run["text"] = recording
    got = enc.embed_texts(CAPTIONS[:3])
    enc._run["text"] = run
    assert seen == [(3, cut_len)]
    np.testing.assert_allclose(got, cut / np.linalg.norm(cut, axis=1, keepdims=True), atol=1e-6)


def test_image_vectors_match_torch(exported, tmp_path):
    spec, clip, folder = exported
    enc = load_model(f"local-dir:{folder}")
    paths = []
    for i, size in enumerate([(640, 480), (300, 500), (224, 224)]):
        paths.append(tmp_path / f"img{i}.png")
        photo_like(*size, seed=i).save(paths[-1])
    pixels = np.stack([enc.preprocess(p) for p in paths])
    with torch.no_grad():
        expected = clip.encode_image(torch.from_numpy(pixels)).numpy()
    got = enc.embed_images(paths)
    assert cosines(got, expected).min() >= 0.9999


def test_int8_variant_is_close_to_fp32(exported, tmp_path):
    spec, _clip, folder = exported
    fp32 = load_model(f"local-dir:{folder}")
    int8 = load_model(f"local-dir:{folder}", precision="int8")
    texts = CAPTIONS[:3]
    assert cosines(int8.embed_texts(texts), fp32.embed_texts(texts)).min() >= 0.99
    path = tmp_path / "x.png"
    photo_like(400, 300).save(path)
    assert cosines(int8.embed_images([path]), fp32.embed_images([path])).min() >= 0.99


def test_a_bad_file_in_a_batch_loses_nothing_else(exported, tmp_path):
    _spec, _clip, folder = exported
    enc = load_model(f"local-dir:{folder}")
    good = []
    for i in range(3):
        good.append(tmp_path / f"good{i}.jpg")
        photo_like(320, 240, seed=i).save(good[-1])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    batch = enc.try_embed_images([good[0], bad, good[1], good[2]])
    assert batch.ok == [0, 2, 3] and batch.vectors.shape == (3, enc.dim)
    assert [i for i, _ in batch.failed] == [1] and "broken.jpg" in str(batch.failed[0][1])
    np.testing.assert_allclose(batch.vectors, enc.embed_images(good), atol=1e-5)
    from clipseek.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        enc.embed_images([good[0], bad])


def test_local_dir_spec_comes_from_the_manifest(exported):
    spec, _clip, folder = exported
    from clipseek.models import modeldir

    assert get_spec(f"local-dir:{folder}") == spec
    modeldir.verify(folder)
    (folder / "image.onnx").write_bytes((folder / "image.onnx").read_bytes()[:-10])
    with pytest.raises(Exception, match="does not match its recorded checksum"):
        modeldir.verify(folder)


def test_vespa_embedder_form_matches_torch(exported, tmp_path, flickr):
    """The text tower as Vespa's hugging-face-embedder runs it (100 captions) = open_clip's encode_text."""
    from clipseek.tokenizer import get_tokenizer
    from clipseek.vespa.embedder import write_embedder, write_tokenizer
    from clipseek.vespa.export import Embedder, services_text

    from ..conftest import flickr_captions
    from ..vespa_embedder import PackageEmbedder

    spec, clip, folder = exported
    files = write_embedder(folder / "text.onnx", tmp_path, spec.slug)
    write_tokenizer(tmp_path)
    (tmp_path / "services.xml").write_text(services_text(embedders=[Embedder(spec.slug, "q", files)]))
    captions = flickr_captions(flickr)[7::400][:100]
    got = PackageEmbedder(tmp_path, spec.slug).embed(captions)
    with torch.no_grad():
        expected = clip.encode_text(torch.from_numpy(get_tokenizer()(captions))).numpy()
    assert len(captions) == 100 and cosines(got, expected).min() >= 0.9999
