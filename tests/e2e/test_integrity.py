"""Damage on disk is found and named, never silently served: garbled or truncated vector rows, wrong norms, a
corrupt graph snapshot, a full disk. `clipseek check --repair` rebuilds what is derived and `clipseek index`
re-embeds what was lost."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from clipseek import synth
from clipseek.check import check
from clipseek.collection import Collection, Document
from clipseek.errors import CollectionDamagedError

from ..serving import env_for

DIM = 16
CLI = [sys.executable, "-m", "clipseek.cli"]


def vectors(n, seed=3):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def made(tmp_path):
    vecs = vectors(300)
    with Collection.create(tmp_path / "c") as c:
        c.add_field("tiny_image", "tiny", DIM)
        for start in range(0, 300, 100):
            c.feed([Document(f"d{i}", path=f"/p/{i}.jpg", vectors={"tiny_image": vecs[i]})
                    for i in range(start, start + 100)])
        c.remove("d7")
    return tmp_path / "c", vecs


def ranking(folder, q, **kw):
    with Collection.open(folder, readonly=True, exact_threshold=0) as c:
        return [(h.docid, round(h.relevance, 6)) for h in c.search(q, field="tiny_image", hits=10, **kw).hits]


def run(*args, env_base):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env_for(env_base))


def test_a_garbled_row_is_an_error_naming_it_and_repair_drops_only_its_vector(made, tmp_path):
    folder, vecs = made
    f32 = folder / "vectors" / "tiny_image.f32"
    with open(f32, "r+b") as fh:  # slot 42 belongs to d42: flip some of its bytes
        fh.seek(42 * DIM * 4 + 8)
        fh.write(b"\x7f\x7f\x7f\x7f")
    with pytest.raises(CollectionDamagedError, match=r"tiny_image.f32 \(slots 42\).*clipseek check --repair"):
        Collection.open(folder, readonly=True)
    result = run("check", "--collection", str(folder), "--json", env_base=tmp_path)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["ok"] and report["reindex"] == ["/p/42.jpg"]
    result = run("check", "--collection", str(folder), "--repair", env_base=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "repaired" in result.stdout and "re-index: /p/42.jpg" in result.stdout
    with Collection.open(folder, readonly=True) as c:
        assert "tiny_image" not in c.get("d42").vectors and len(c) == 299
        assert np.array_equal(c.get("d43").vectors["tiny_image"], vecs[43])
    assert check(folder).ok and check(folder).problems == []


def test_a_garbled_dead_row_is_harmless(made):
    folder, _ = made
    with open(folder / "vectors" / "tiny_image.f32", "r+b") as fh:  # slot 7: d7 was removed
        fh.seek(7 * DIM * 4)
        fh.write(b"\x00" * 16)
    assert ranking(folder, vectors(1, seed=9)[0])  # opens and searches
    assert check(folder).problems == []


def test_a_slot_that_is_not_a_number_is_reported_at_open_and_repaired_by_check(made, tmp_path):
    folder, vecs = made
    with sqlite3.connect(folder / "collection.sqlite") as db:
        db.execute("UPDATE vectors SET slot = '12x' WHERE doc = (SELECT id FROM documents WHERE docid = 'd5')")
    with pytest.raises(CollectionDamagedError, match="tiny_image: the vectors table holds values that are not slot"):
        Collection.open(folder, readonly=True)
    result = run("check", "--collection", str(folder), "--json", env_base=tmp_path)  # what the error says to run
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["reindex"] == ["/p/5.jpg"], result.stderr
    assert "slot that is not a number" in report["problems"][0]
    result = run("check", "--collection", str(folder), "--repair", env_base=tmp_path)
    assert result.returncode == 0 and "re-index: /p/5.jpg" in result.stdout, result.stderr
    with Collection.open(folder, readonly=True) as c:
        assert len(c) == 299 and "tiny_image" not in c.get("d5").vectors
        assert np.array_equal(c.get("d6").vectors["tiny_image"], vecs[6])
        assert c.search(vecs[6], field="tiny_image", hits=1).hits[0].docid == "d6"
    assert check(folder).ok and check(folder).problems == []


def test_a_truncated_vector_file_is_reported_not_padded_with_zeros(made):
    folder, vecs = made
    f32 = folder / "vectors" / "tiny_image.f32"
    os.truncate(f32, 250 * DIM * 4)
    with pytest.raises(CollectionDamagedError, match="holds 250 rows but 300 are committed"):
        Collection.open(folder)
    assert os.path.getsize(f32) == 250 * DIM * 4  # opening wrote nothing
    report = check(folder, repair=True)
    assert report.ok and len(report.reindex) == 50
    with Collection.open(folder) as c:
        assert len(c) == 299 and sum("tiny_image" in d.vectors for d in c.iter_documents()) == 249
        c.feed([Document("new", vectors={"tiny_image": vecs[0]})])  # appends after the last whole row
        assert np.array_equal(c.get("new").vectors["tiny_image"], vecs[0])
        assert np.array_equal(c.get("d100").vectors["tiny_image"], vecs[100])


def test_wrong_norms_are_derived_data_and_do_not_change_rankings(made):
    folder, vecs = made
    q = vectors(1, seed=11)[0]
    before = ranking(folder, q, approximate=False)
    norm = folder / "vectors" / "tiny_image.norm"
    garbled = np.fromfile(norm, dtype="<f4")
    garbled[:50] *= 3.0
    garbled.tofile(norm)
    assert ranking(folder, q, approximate=False) == before  # a reader computes them from the rows
    assert any("norms" in p for p in check(folder).problems)
    Collection.open(folder).close()  # a writer rewrites the file
    assert check(folder).problems == []
    assert np.allclose(np.fromfile(norm, dtype="<f4"), np.linalg.norm(vecs, axis=1), rtol=1e-6)


def test_a_corrupt_graph_snapshot_is_never_loaded(tmp_path):
    """A 64 KB overwrite in the middle of a snapshot used to segfault every command that loaded it."""
    folder = tmp_path / "c"
    vecs = np.random.default_rng(4).normal(size=(6000, DIM)).astype(np.float32)
    with Collection.create(folder, exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed([Document(f"d{i}", vectors={"tiny_image": v}) for i, v in enumerate(vecs)])
        c.search(vecs[0], field="tiny_image", hits=5)  # builds the graph; close() snapshots it
    q = vecs[17] + 0.01
    exact = ranking(folder, q, approximate=False)
    (snapshot,) = (folder / "ann").glob("tiny_image.*.faiss")
    with open(snapshot, "r+b") as fh:
        fh.seek(snapshot.stat().st_size // 2)
        fh.write(os.urandom(64 * 1024))
    code = textwrap.dedent(f"""
        import numpy as np
        from clipseek.collection import Collection
        q = np.asarray({q.tolist()!r}, dtype=np.float32)
        for readonly in (True, False):
            with Collection.open({str(folder)!r}, readonly=readonly, exact_threshold=0) as c:
                print([(h.docid, round(h.relevance, 6)) for h in c.search(q, field="tiny_image", hits=10).hits])
                print([(h.docid, round(h.relevance, 6)) for h in c.search(q, field="tiny_image", hits=10,
                                                                            approximate=False).hits])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]  # not -11
    lines = [eval(line) for line in proc.stdout.splitlines()]  # noqa: S307 - our subprocess's repr of tuples
    assert len(lines) == 4
    for graph, exhaustive in (lines[0:2], lines[2:4]):  # reader, then writer
        assert exhaustive == exact  # the vectors are intact
        # the graph rebuilt from them finds their neighbours; its relevance comes from 12-bit codes, which near
        # cos = 1 (this query is a hair from d17) moves closeness by up to ~1e-2
        found = dict(graph)
        assert len(found.keys() & dict(exact).keys()) >= 8, graph
        assert all(abs(found[d] - r) < 2e-2 for d, r in exact if d in found)
    assert check(folder).problems == []  # the writer's close replaced it with a sound snapshot


def test_the_wal_is_checkpointed_after_an_index_run(tmp_path):
    gallery = synth.write_dataset(tmp_path / "g", 20, seed=501)
    folder = tmp_path / "c"
    result = run("index", str(gallery / "images"), "--collection", str(folder), "--model", "tiny", env_base=tmp_path)
    assert result.returncode == 0, result.stderr
    wal = folder / "collection.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    copy = tmp_path / "copy"  # the database file alone holds every document
    copy.mkdir()
    shutil.copy(folder / "collection.sqlite", copy / "collection.sqlite")
    db = sqlite3.connect(copy / "collection.sqlite")
    assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == 20
    db.close()


DISK_FULL = """
set -e
mount -t tmpfs -o size=3m tmpfs "$DIR"
head -c 2850000 /dev/zero > "$DIR/filler" || true
set +e
"$PY" -m clipseek.cli index "$GALLERY" --collection "$DIR/c" --model tiny --batch-size 16 \\
    > "$OUT/first.out" 2> "$OUT/first.err"
echo $? > "$OUT/first.rc"
"$PY" -c "import sqlite3; db = sqlite3.connect('$DIR/c/collection.sqlite'); \\
print(db.execute('select count(*) from documents').fetchone()[0])" > "$OUT/committed"
rm "$DIR/filler"
"$PY" -m clipseek.cli index "$GALLERY" --collection "$DIR/c" --model tiny > "$OUT/second.out" 2> "$OUT/second.err"
echo $? > "$OUT/second.rc"
"$PY" -m clipseek.cli check --collection "$DIR/c" > "$OUT/check.out" 2>&1
echo $? > "$OUT/check.rc"
"""


def test_a_full_disk_is_reported_in_words_and_loses_nothing(tmp_path):
    """Index onto a 3 MB tmpfs that is nearly full (a private mount namespace: needs root, as CI runs)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")
    gallery = synth.write_dataset(tmp_path / "g", 400, seed=502)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "mnt").mkdir()
    env = dict(env_for(tmp_path), DIR=str(tmp_path / "mnt"), OUT=str(out), PY=sys.executable,
               GALLERY=str(gallery / "images"))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", DISK_FULL], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first_err
    assert "disk full" in first_err and "Traceback" not in first_err
    assert "free space and re-run" in first_err
    committed = int((out / "committed").read_text())
    assert 0 < committed < 400 and f"{committed} documents written, nothing lost" in first_err
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    assert f"{400 - committed} indexed, {committed} unchanged" in (out / "second.out").read_text()
    assert (out / "check.rc").read_text().strip() == "0", (out / "check.out").read_text()


def test_a_file_truncated_under_an_open_writer_is_not_padded_by_its_next_write(made):
    """The open-time check cannot see a file cut while a writer holds the collection: the write itself must."""
    folder, vecs = made
    f32 = folder / "vectors" / "tiny_image.f32"
    with Collection.open(folder) as c:
        os.truncate(f32, 250 * DIM * 4)
        with pytest.raises(CollectionDamagedError, match="holds 250 rows but 300 are committed"):
            c.feed([Document("after", vectors={"tiny_image": vecs[0]})])
        assert os.path.getsize(f32) == 250 * DIM * 4  # nothing appended after a hole of zeros
        assert c.get("after") is None
