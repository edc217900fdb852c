"""`clipseek embed` (here and on a real local Ray cluster), its shards, `clipseek import` and
`clipseek vespa feed --from`: vectors equal to the indexer's, exact-once across killed workers and drivers."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipseek import synth
from clipseek.cli import main
from clipseek.collection import Collection
from clipseek.embed import DELAY_ENV, SHARD_DELAY_ENV, Preprocess, list_sources, prepare
from clipseek.indexer import docid_for
from clipseek.models import get_spec
from clipseek.shards import ShardSet

from ..conftest import need_module
from ..serving import env_for, running_server

need_module("pyarrow")
need_module("ray")
need_module("ray.data")

N_GOOD = 48
BAD = {"bad.jpg": "not an image format Pillow can read", "empty.png": "empty file (0 bytes)"}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """48 captioned synth images, a file that is not an image, an empty one, and a truncated JPEG."""
    root = synth.write_dataset(tmp_path_factory.mktemp("embed") / "g", N_GOOD, seed=41)
    images = root / "images"
    for p in sorted(images.glob("synth_*.png"))[-6:]:  # large JPEGs: decoded in draft mode, like the indexer's
        Image.open(p).convert("RGB").resize((900, 700)).save(p.with_suffix(".jpg"), quality=92)
        p.unlink()
    (images / "bad.jpg").write_bytes(b"not an image at all")
    (images / "empty.png").write_bytes(b"")
    Image.open(images / "synth_41_00000.png").convert("RGB").save(images / "cut.jpg", quality=90)
    data = (images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 3])
    return root


# The cluster's head runs in a process of its own, never in pytest's: a driver leaves Ray's native threads (gRPC,
# its GCS client) running after ray.shutdown() and replaces the SIGSEGV handler, so a later native crash anywhere in
# the suite would kill the run without faulthandler's traceback.
HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test run closes it
ray.shutdown()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real Ray cluster on this machine, started once; `clipseek embed --ray ADDRESS` drivers join it.

    It uses Ray's token authentication, as a new local cluster does, with a token of its own that the drivers get
    from the environment (so nothing is written to ~/.ray)."""
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        with open(log, "w") as err:
            head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True)
        assert head.stdin is not None and head.stdout is not None
        try:
            address = head.stdout.readline().strip()
            if not address:
                head.wait(60)
                pytest.fail(f"the Ray head did not start (exit {head.returncode}): {log.read_text()[-3000:]}")
            yield address
        finally:
            head.stdin.close()
            try:
                head.wait(120)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def run(base: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clipseek.cli", *args], env={**env_for(base), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def rows(folder: Path) -> dict[bytes, tuple[object, np.ndarray | None]]:
    """Every item of a shard folder by path bytes; asserts that none appears twice."""
    out: dict[bytes, tuple[object, np.ndarray | None]] = {}
    for row, vector in ShardSet.open(folder).rows():
        assert row.path_bytes not in out, f"{row.path} is in the shards twice"
        out[row.path_bytes] = (row, vector)
    return out


def expected_items(gallery: Path) -> set[bytes]:
    return {os.fsencode(p) for p in (gallery / "images").iterdir()}


@pytest.fixture(scope="module")
def local_shards(gallery, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "local"
    cli("embed", str(gallery / "images"), "--out", str(out), "--model", "tiny", "--shard-size", "10")
    return out


def test_embed_gives_the_indexers_vectors_and_failures(gallery, local_shards, tmp_path):
    out = cli("index", str(gallery / "images"), "--collection", str(tmp_path / "c"), "--model", "tiny")
    got = rows(local_shards)
    assert set(got) == expected_items(gallery)
    assert sorted(p.name for p in local_shards.glob("shard-*.parquet")) == [f"shard-{i:06d}.parquet"
                                                                           for i in range(6)]  # 51 items / 10
    with Collection.open(tmp_path / "c", readonly=True) as coll:
        indexed = {d.docid: d for d in coll.iter_documents()}
    failed = {raw: row.error for raw, (row, vector) in got.items() if vector is None}
    assert {os.path.basename(raw).decode(): why for raw, why in failed.items() if b"cut" not in raw} == BAD
    assert b"truncated or corrupt" in failed[os.fsencode(gallery / "images" / "cut.jpg")].encode()
    for name, why in BAD.items():
        assert f"{name}: {why}" in out  # the indexer gives the same reasons
    assert len(indexed) == N_GOOD
    # decode tasks preprocess without the model: the same pixels as the encoder's own path (JPEG drafts too)
    from clipseek import load_model
    model = load_model("tiny")
    pre = Preprocess.of(model)
    for p in sorted((gallery / "images").glob("synth_*")):
        np.testing.assert_array_equal(pre(p.read_bytes(), str(p))[0], model.preprocess(p))
    for raw, (row, vector) in got.items():
        if vector is None:
            assert docid_for(raw) not in indexed
            continue
        doc = indexed[docid_for(raw)]
        assert float(vector @ doc.vectors["tiny_image"]) >= 0.99999
        assert (row.content_hash, row.size, row.width, row.height, row.format, row.mtime) == (
            doc.content_hash, doc.size, doc.width, doc.height, doc.format, doc.mtime)


def test_import_then_search_finds_the_captioned_image_and_index_embeds_nothing(gallery, local_shards, tmp_path):
    coll_dir = str(tmp_path / "c")
    assert "48 imported, 0 unchanged, 3 failed" in cli("import", str(local_shards), "--collection", coll_dir)
    assert "0 imported, 48 unchanged" in cli("import", str(local_shards), "--collection", coll_dir)
    # the documents are the indexer's: indexing the folder afterwards finds every image unchanged
    out = cli("index", str(gallery / "images"), "--collection", coll_dir, "--model", "tiny")
    assert "0 indexed, 48 unchanged, 0 reused, 0 removed, 3 failed" in out
    captions = {}
    for line in (gallery / "captions.txt").read_text().splitlines():
        name, caption = line.split("\t", 1)
        captions.setdefault(name, caption)
    from clipseek import load_model
    model = load_model("tiny")
    with Collection.open(coll_dir, readonly=True) as coll:
        assert len(coll) == N_GOOD
        names = sorted(captions)[:24]
        vectors = model.embed_texts([captions[n] for n in names])
        top1 = [coll.search(v, field="tiny_image", hits=1).hits[0].fields["image_file_name"] for v in vectors]
    right = sum(a == b for a, b in zip(top1, names))
    assert right >= 0.8 * len(names), list(zip(names, top1))


def test_rerun_embeds_nothing_and_new_images_go_to_a_new_shard(gallery, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((gallery / "images").glob("synth_*.png"))[:12]:
        (images / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "shards"
    assert "12 embedded, 0 failed, 0 already" in cli("embed", str(images), "--out", str(out), "--model", "tiny",
                                                     "--shard-size", "5")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert len(before) == 3
    assert "0 embedded, 0 failed, 12 already in complete shards, 0 shards" in cli(
        "embed", str(images), "--out", str(out), "--model", "tiny", "--shard-size", "5")
    for p in sorted((gallery / "images").glob("synth_*.png"))[12:15]:
        (images / p.name).write_bytes(p.read_bytes())
    assert "3 embedded, 0 failed, 12 already in complete shards, 1 shards" in cli(
        "embed", str(images), "--out", str(out), "--model", "tiny", "--shard-size", "5")
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {"shard-000003.parquet"}
    assert len(rows(out)) == 15


def test_ray_embed_equals_local(gallery, local_shards, cluster, tmp_path):
    out = tmp_path / "ray"
    result = run(tmp_path, "embed", str(gallery / "images"), "--out", str(out), "--model", "tiny",
                 "--shard-size", "10", "--batch-size", "8", "--ray", cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "48 embedded, 3 failed" in result.stdout
    local, remote = rows(local_shards), rows(out)
    assert local.keys() == remote.keys()
    for raw, (row, vector) in local.items():
        row_r, vector_r = remote[raw]
        assert row_r == row
        if vector is None:
            assert vector_r is None
        else:
            assert float(vector @ vector_r) >= 0.99999


def _pids(marker: bytes) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker in fh.read():
                        out.append(int(entry))
            except OSError:
                pass
    return out


def _wait_for(predicate, what: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_killed_worker_and_killed_driver_leave_every_image_exactly_once(gallery, cluster, tmp_path):
    args = [sys.executable, "-m", "clipseek.cli", "embed", str(gallery / "images"), "--model", "tiny",
            "--shard-size", "6", "--batch-size", "3", "--ray", cluster]
    slow = {**env_for(tmp_path), DELAY_ENV: "0.25"}
    actor = b"MapBatches(EncodeActor)"

    # 1. an encoder actor killed mid-run: Ray restarts it and retries its batch; the run completes
    out = tmp_path / "worker"
    proc = subprocess.Popen([*args, "--out", str(out)], env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: len(list(out.glob("shard-*.parquet"))) >= 1, "a first shard", proc)
    victims = _pids(actor)
    assert victims, "no encoder actor process found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "48 embedded, 3 failed" in stdout
    assert set(rows(out)) == expected_items(gallery)
    assert not set(victims) & set(_pids(actor))

    # 2. the driver killed mid-run: the shards it wrote stay as they are; a re-run completes the rest
    out = tmp_path / "driver"
    # a run of ~15 s, and 1.5 s after each shard written: the kill lands after the first shard and before the next,
    # even when the encoder tasks end together (then every shard completes at once) or the machine is loaded
    slower = {**slow, DELAY_ENV: "0.6", SHARD_DELAY_ENV: "1.5"}
    proc = subprocess.Popen([*args, "--out", str(out)], env=slower, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: len(list(out.glob("shard-*.parquet"))) >= 1, "a first shard", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("shard-*.parquet")}
    held = len(rows(out))
    assert 0 < held < N_GOOD + 3
    result = subprocess.run([*args, "--out", str(out)], env=env_for(tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{held} already in complete shards" in result.stdout
    assert {p: (p_.stat().st_mtime_ns, p_.read_bytes()) for p, p_ in
            ((n, out / n) for n in kept)} == kept
    assert set(rows(out)) == expected_items(gallery)  # rows() fails on any item written twice
    assert not list(out.glob("*.tmp"))


def test_vespa_feed_from_shards_writes_what_import_writes(local_shards, tmp_path):
    need_module("vespa.application")
    cli("import", str(local_shards), "--collection", str(tmp_path / "imported"))
    with running_server(tmp_path / "served", tmp_path) as (url, _port):
        result = run(tmp_path, "vespa", "feed", "--from", str(local_shards), "--url", url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "48 fed, 0 failed, 3 without a vector" in result.stdout
    with Collection.open(tmp_path / "imported", readonly=True) as a, \
            Collection.open(tmp_path / "served", readonly=True) as b:
        docs_a = {d.docid: d for d in a.iter_documents()}
        docs_b = {d.docid: d for d in b.iter_documents()}
        assert docs_a.keys() == docs_b.keys() and len(docs_b) == N_GOOD
        for docid, da in docs_a.items():
            db = docs_b[docid]
            keep = lambda d: {k: v for k, v in d.attributes().items() if k != "indexed_at"}  # noqa: E731
            assert keep(da) == keep(db)
            np.testing.assert_array_equal(da.vectors["tiny_image"], db.vectors["tiny_image"])


def test_sources_lists_globs_and_file_urls(gallery, local_shards, tmp_path):
    images = gallery / "images"
    names = sorted(p.name for p in images.glob("synth_*"))[:4]
    listing = tmp_path / "list.txt"
    rel = os.path.relpath(images, tmp_path)
    listing.write_text("# the first four\n" + "".join(f"{rel}/{n}\n" for n in names) + "\n")
    assert list_sources([str(listing)]) == [os.fsencode(images / n) for n in names]
    assert len(list_sources([str(images / "synth_*_0000[0-3].png")])) == 4
    urls = list_sources([images.as_uri() + "/"])
    assert len(urls) == N_GOOD + 3 and all(u.startswith(b"file://") for u in urls)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"url": [(images / n).as_uri() for n in names]}), tmp_path / "list.parquet")
    out = tmp_path / "from-urls"
    assert "4 embedded, 0 failed" in cli("embed", str(tmp_path / "list.parquet"), "--out", str(out),
                                         "--model", "tiny")
    local = rows(local_shards)
    for raw, (row, vector) in rows(out).items():
        assert raw.startswith(b"file://") and row.mtime is None
        twin_row, twin = local[os.fsencode(images / os.path.basename(raw.decode()))]
        assert row.content_hash == twin_row.content_hash and float(vector @ twin) >= 0.99999


def test_bad_sources_and_folders_are_refused_in_words(gallery, local_shards, tmp_path):
    result = CliRunner().invoke(main, ["embed", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no such file, folder or glob match" in result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["embed", str(gallery / "images"), "--out", str(other), "--model", "tiny"])
    assert result.exit_code == 1 and "is not empty and holds no embeddings.json" in result.output
    result = CliRunner().invoke(main, ["import", str(other)])
    assert result.exit_code == 1 and "not a folder of `clipseek embed` shards" in result.output
    from clipseek.embed import EmbedError
    with pytest.raises(EmbedError, match="pyarrow cannot open it"):
        list_sources(["nosuchscheme://bucket/photos/"])
    with pytest.raises(EmbedError, match="not found"):
        list_sources([(tmp_path / "gone").as_uri() + "/"])
    pre = Preprocess(get_spec("tiny"))
    row, pixels = prepare(os.fsencode(tmp_path / "vanished.jpg"), pre)
    assert pixels is None and row.error == "vanished before it could be read"


def test_a_shard_folder_of_another_model_is_refused(local_shards, tmp_path):
    from clipseek.errors import ClipseekError
    with pytest.raises(ClipseekError, match="holds vectors of tiny, not ViT-B/32: use --model tiny"):
        ShardSet.open(local_shards, model="ViT-B/32", image_model="ViT-B/32", field="vit_b_32_image", dim=512,
                      create=True)


def test_a_second_run_on_the_same_folder_waits_its_turn(gallery, local_shards):
    before = sorted(p.name for p in local_shards.iterdir())
    lock = ShardSet.open(local_shards).lock()  # as a running `clipseek embed` holds it
    try:
        result = CliRunner().invoke(main, ["embed", str(gallery / "images"), "--out", str(local_shards),
                                           "--model", "tiny"])
    finally:
        os.close(lock)
    assert result.exit_code == 1 and f"is being written by pid {os.getpid()}" in result.output, result.output
    assert sorted(p.name for p in local_shards.iterdir()) == before
    assert "0 embedded" in cli("embed", str(gallery / "images"), "--out", str(local_shards), "--model", "tiny")


def test_ray_missing_says_what_to_install(gallery, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from clipseek.cli import main; "
            f"main(['embed', {str(gallery / 'images')!r}, '--out', {str(tmp_path / 'o')!r}, '--model', 'tiny', "
            "'--ray', 'local'])")
    result = subprocess.run([sys.executable, "-c", code], env=env_for(tmp_path), capture_output=True, text=True)
    assert result.returncode == 1
    assert "--ray needs Ray Data, which is not installed: pip install 'clipseek[ray]'" in result.stderr
