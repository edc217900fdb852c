"""clipseek.hnsw: the graph's 12-bit re-scoring codes and their snapshot."""

import numpy as np
import pytest

from clipseek import hnsw
from clipseek.hnsw import AnnIndex, HnswParams, snapshot_meta

from ..conftest import need_module

PARAMS = HnswParams(16, 64)


def unit_cosines(x, q, slots):
    rows = x[slots].astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    return np.where(norms > 0, rows @ q / np.where(norms > 0, norms, 1) / np.linalg.norm(q), 0.0)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dim", [64, 63, 512])
def test_cosines_from_codes_are_within_1e_3_and_zero_rows_are_zero(dim, compiled, monkeypatch):
    """Both ways of re-scoring: compiled (numba) and numpy's."""
    if compiled:
        need_module("numba", "it installs with clipseek (pyproject.toml) where numba has wheels")
    monkeypatch.setattr(hnsw, "COMPILED", compiled)
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((2000, dim)).astype(np.float32) * rng.uniform(0.1, 10, (2000, 1)).astype(np.float32)
    x[7] = 0
    graph = AnnIndex(dim, PARAMS)
    graph.extend(x, len(x))
    q = rng.standard_normal(dim).astype(np.float32)
    slots = np.arange(0, 2000, 3)
    got = graph.cosines(q, slots)
    want = unit_cosines(x, q, slots)
    assert np.abs(got - want).max() < 1e-3
    assert np.median(np.abs(got - want)) < 1e-4  # int8 alone: ~1e-3
    assert abs(graph.cosines(q, np.asarray([7]))[0]) < 1e-6  # a zero row: as exact search's 0
    assert graph.cosines(np.zeros(dim, np.float32), slots[:3]).tolist() == [0.0, 0.0, 0.0]


def test_codes_rank_the_nearest_as_float32_does():
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((50, 128)).astype(np.float32)
    x = centers[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 128)).astype(np.float32)
    graph = AnnIndex(128, PARAMS)
    graph.extend(x, len(x))
    everyone = np.arange(len(x))
    hits = 0
    for q in x[rng.integers(0, 5000, 50)] + 0.1 * rng.standard_normal((50, 128)).astype(np.float32):
        truth = set(np.argsort(-unit_cosines(x, q, everyone))[:10].tolist())
        hits += len(truth & set(np.argsort(-graph.cosines(q, everyone))[:10].tolist()))
    assert hits / 500 >= 0.98


@pytest.mark.parametrize("view", [False, True])
def test_snapshot_keeps_the_residuals(tmp_path, view):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1500, 32)).astype(np.float32)
    graph = AnnIndex(32, PARAMS)
    graph.extend(x, len(x))
    graph.save(tmp_path, "f")
    loaded = AnnIndex.load(tmp_path, "f", 32, PARAMS, view=view)
    assert loaded is not None and loaded.is_view == view and len(loaded) == 1500
    q = rng.standard_normal(32).astype(np.float32)
    slots = np.arange(1500)
    assert np.array_equal(loaded.cosines(q, slots), graph.cosines(q, slots))


def test_a_damaged_or_missing_residual_file_is_never_loaded(tmp_path):
    x = np.random.default_rng(3).standard_normal((800, 16)).astype(np.float32)
    graph = AnnIndex(16, PARAMS)
    graph.extend(x, len(x))
    snapshot = graph.save(tmp_path, "f")
    residuals = snapshot.with_suffix(".r4")
    assert snapshot_meta(snapshot) is not None
    data = bytearray(residuals.read_bytes())
    data[100] ^= 0xFF
    residuals.write_bytes(bytes(data))
    assert snapshot_meta(snapshot) is None
    assert AnnIndex.load(tmp_path, "f", 16, PARAMS) is None
    residuals.unlink()
    assert AnnIndex.load(tmp_path, "f", 16, PARAMS) is None


def test_faiss_holds_the_codes_made_here_and_compares_them_with_the_query_as_it_is():
    """The codes go to faiss decoded and come back as the same bytes; its scan ranks by the float query's dot product
    with them (no rounding of the query)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    x[5] *= 40  # a long row: the codes are of the normalised rows
    x[9, 3] = 1e4  # one component far beyond the rest: saturates at +127
    x[10, 4] = -1e4  # and at -127
    graph = AnnIndex(48, PARAMS)
    graph.extend(x, len(x))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = np.clip(np.rint(unit * np.float32(127 * graph.scale)), -127, 127).astype(np.int8)
    assert np.array_equal(graph.codes(np.arange(len(x))), want)
    assert graph.codes(np.asarray([9]))[0, 3] == 127 and graph.codes(np.asarray([10]))[0, 4] == -127
    for q in rng.standard_normal((5, 48)).astype(np.float32):
        order = np.argsort(-(want.astype(np.float64) @ q), kind="stable")[:20]
        assert graph.scan(q, 20, np.packbits(np.ones(len(x), bool), bitorder="little")).tolist() == order.tolist()


def test_a_snapshot_of_format_4_is_read_as_the_same_codes(tmp_path):
    """Format 4 stored the same bytes as faiss's direct signed codes: it is loaded, not rebuilt, and finds the same."""
    import json

    import faiss

    from clipseek.checksums import file_crc32

    rng = np.random.default_rng(4)
    x = rng.standard_normal((1200, 32)).astype(np.float32)
    graph = AnnIndex(32, PARAMS)
    graph.extend(x, len(x))
    snapshot = graph.save(tmp_path, "f")
    old = faiss.read_index(str(snapshot))
    storage = faiss.downcast_index(old.storage)
    storage.sq.qtype = faiss.ScalarQuantizer.QT_8bit_direct_signed
    storage.sq.set_derived_sizes()
    storage.sq.trained.resize(0)  # (direct codes have no range)
    faiss.write_index(old, str(snapshot))
    meta = json.loads(snapshot.with_suffix(".json").read_text())
    meta.update(format="faiss-hnsw-sq8-ip-4", crc32=file_crc32(snapshot))
    snapshot.with_suffix(".json").write_text(json.dumps(meta))
    loaded = AnnIndex.load(tmp_path, "f", 32, PARAMS)
    assert loaded is not None and len(loaded) == 1200
    assert np.array_equal(loaded.codes(np.arange(1200)), graph.codes(np.arange(1200)))
    for q in rng.standard_normal((10, 32)).astype(np.float32):
        assert loaded.search(q, 10, 32).tolist() == graph.search(q, 10, 32).tolist()
