"""SIGKILL a feeding process at random moments; the collection must open and agree with itself."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clipseek.collection import Collection

HERE = Path(__file__).resolve().parents[1]  # tests/, where the feeder lives


def run_and_kill(path: Path, start: int, acks: int, jitter: float) -> int:
    """Start the feeder at batch ``start``, SIGKILL it ``jitter`` seconds after its ``acks``-th acknowledgement
    (somewhere in the next batch's write); the last batch it acknowledged."""
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(HERE.parent))
    proc = subprocess.Popen([sys.executable, "-m", "tests.crash_feeder", str(path), str(start)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:  # the feeder's own signal that a batch is committed, not a guess of time
        if line.startswith("ack "):
            seen += 1
            if seen == acks:
                break
    time.sleep(jitter)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    acked = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ack ")]
    return start + seen - 1 + len(acked)


def expected_documents(last: int) -> dict[str, int]:
    """docid → width after the feeder's batches 0..last, exactly as crash_feeder applies them."""
    docs: dict[str, int] = {}
    for batch in range(last + 1):
        docs.update(feed_of(batch))
        if batch % 4 == 0:
            docs.pop(f"b{batch - 2}-1", None)
    return docs


def feed_of(batch: int) -> dict[str, int]:
    docs = {f"b{batch}-{i}": batch for i in range(20)}
    if batch % 3 == 2:
        docs[f"b{batch - 1}-0"] = batch
    return docs


def check_consistent(path: Path, last_acked: int) -> None:
    db = sqlite3.connect(path / "collection.sqlite")
    next_slot = db.execute("SELECT next_slot FROM vector_fields WHERE name='tiny_image'").fetchone()[0]
    orphans = db.execute("SELECT count(*) FROM vectors WHERE doc NOT IN (SELECT id FROM documents)").fetchone()[0]
    missing = db.execute("SELECT count(*) FROM documents WHERE id NOT IN (SELECT doc FROM vectors)").fetchone()[0]
    bad_slots = db.execute("SELECT count(*) FROM vectors WHERE slot >= ?", (next_slot,)).fetchone()[0]
    dup_slots = db.execute("SELECT count(*) - count(DISTINCT slot) FROM vectors").fetchone()[0]
    assert (orphans, missing, bad_slots, dup_slots) == (0, 0, 0, 0)
    found = dict(db.execute("SELECT docid, width FROM documents").fetchall())
    db.close()
    # every acknowledged write exactly, plus at most the next batch's feed (and then perhaps its removal)
    acked = expected_documents(last_acked)
    with_feed = {**acked, **feed_of(last_acked + 1)}
    allowed = [acked, with_feed, expected_documents(last_acked + 1)]
    assert found in allowed, (f"after ack {last_acked}: {len(set(acked) - set(found))} acknowledged documents "
                              f"lost, {len(set(found) - set(with_feed))} unexpected")
    env = dict(os.environ, PYTHONHASHSEED="0")
    code = (
        "import sys, numpy as np\n"
        "from tests.crash_feeder import vector_for\n"
        "from clipseek.collection import Collection\n"
        f"c = Collection.open({str(path)!r}, exact_threshold=0)\n"
        "for d in c.iter_documents():\n"
        "    assert np.array_equal(d.vectors['tiny_image'], vector_for(d.docid)), d.docid\n"
        "q = vector_for('b0-5')\n"
        "ann = [h.docid for h in c.search(q, field='tiny_image', hits=5, target_hits=40).hits]\n"
        "ex = [h.docid for h in c.search(q, field='tiny_image', hits=5, approximate=False).hits]\n"
        "assert len(set(ann) & set(ex)) >= 4, (ann, ex)\n"
        "c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=HERE.parent)


def test_sigkill_at_random_moments(tmp_path):
    rng = random.Random(int(os.environ.get("CLIPSEEK_CRASH_SEED", "20261126")))
    path = tmp_path / "c"
    start = 0
    for _ in range(12):
        last = run_and_kill(path, start, rng.randint(1, 6), rng.uniform(0.0, 0.03))
        check_consistent(path, last)
        start = last + 1
    assert start > 12  # the feeder made real progress between kills
    with Collection.open(path) as c:
        assert len(c) > 200


def test_a_reader_follows_a_feeding_process(tmp_path):
    """Another process commits 300 batches (and snapshots its graph) while this one searches: every search
    succeeds, and the reader ends up seeing every document. Two rounds, as a commit landing between a
    reader's reads is a race (one round caught the bug it guards against 3 times in 4)."""
    last = 299
    for round_ in range(2):
        path = tmp_path / f"c{round_}"
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(HERE.parent))
        feeder = subprocess.Popen([sys.executable, "-m", "tests.crash_feeder", str(path), "0", str(last)],
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
        errors, sizes = [], []
        try:
            assert feeder.stdout is not None and feeder.stdout.readline().startswith("ack ")
            rng = np.random.RandomState(round_)
            with Collection.open(path, readonly=True, exact_threshold=0) as reader:
                q = reader.get("b0-5").vectors["tiny_image"]  # the feeder's vectors follow its own hash seed
                while True:
                    running = feeder.poll() is None
                    try:
                        assert reader.search(q, field="tiny_image", hits=1).hits[0].docid == "b0-5"
                        reader.search(rng.randn(len(q)), field="tiny_image", hits=10, target_hits=40)
                        sizes.append(len(reader))
                    except Exception as exc:  # noqa: BLE001 - shown below
                        errors.append(exc)
                    if not running:
                        break
        finally:
            feeder.kill()
            out, _ = feeder.communicate()
        assert feeder.returncode == 0 and f"ack {last}" in out
        assert errors == [] and len(set(sizes)) > 10  # it searched between many of the feeder's commits
        assert sizes[-1] == (last + 1) * 20 - last // 4  # batches of 20, less a removal every 4th from the 4th
