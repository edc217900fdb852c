"""`clipseek index` / `clipseek search` on real files: every format, every bad case, incremental, resumable."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipseek import load_model, synth
from clipseek.cli import main
from clipseek.collection import Collection
from clipseek.indexer import Indexer

from ..conftest import need_module
from ..imagegen import png_bomb, save_exif_rotated, scene_image


@pytest.fixture
def corpus(tmp_path):
    """A folder with every format, odd modes, odd names, bad files, a hidden folder and a symlink loop."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    good = {
        "a.jpg": lambda p: scene_image(0).save(p, "JPEG", quality=95),
        "b.png": lambda p: scene_image(1).save(p),
        "c.webp": lambda p: scene_image(2).save(p, "WEBP", quality=95),
        "d.bmp": lambda p: scene_image(3).save(p),
        "e.tiff": lambda p: scene_image(4).save(p),
        "sub/f.gif": lambda p: scene_image(5).save(p, save_all=True, append_images=[scene_image(6)]),
        "sub/cmyk.jpg": lambda p: scene_image(7).convert("CMYK").save(p, "JPEG"),
        "sub/grey16.png": lambda p: Image.fromarray((np.asarray(scene_image(8).convert("L"), np.uint16) * 257)).save(p),
        "sub/palette.png": lambda p: _palette_with_alpha(scene_image(9)).save(p),
        "sub/deeper/rot6.jpg": lambda p: save_exif_rotated(scene_image(10), p, 6),
        "sub/deeper/rot8.jpg": lambda p: save_exif_rotated(scene_image(11), p, 8),
        "with space.png": lambda p: scene_image(12).save(p),
        "new\nline.png": lambda p: scene_image(13).save(p),
        "ünïcødé 猫.png": lambda p: scene_image(14).save(p),
    }
    for name, make in good.items():
        make(root / name)
    scene_image(15).save(os.fsencode(root) + b"/caf\xe9.png", "PNG")  # not UTF-8
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    data = (root / "a.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    png_bomb(root / "bomb.png")
    (root / ".hidden").mkdir()
    scene_image(16).save(root / ".hidden" / "secret.png")
    (root / "readme.txt").write_text("ignored: not an image extension")
    os.symlink(root, root / "sub" / "loop")  # a directory symlink loop
    return root, len(good) + 1  # + the non-UTF-8 name


def _palette_with_alpha(img):
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.info["transparency"] = 0
    return pal


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_index_every_format_and_report_every_bad_file(corpus, tiny, tmp_path):
    root, n_good = corpus
    coll_dir = root / "collection"  # inside the indexed tree: must be skipped
    with Collection.create(coll_dir) as coll:
        gone = root / "vanishing.png"
        scene_image(17).save(gone)

        def progress(done, total):
            if done == 0 and gone.exists():
                gone.unlink()  # vanishes between listing and reading
        report = Indexer(coll, tiny, progress=progress).run([root])
        assert report.indexed == n_good, report
        reasons = {Path(p).name: r for p, r in report.failed}
        assert set(reasons) == {"empty.jpg", "notes.jpg", "truncated.jpg", "bomb.png", "vanishing.png"}
        assert "0 bytes" in reasons["empty.jpg"] and "not an image" in reasons["notes.jpg"]
        assert "truncated" in reasons["truncated.jpg"] and "pixels" in reasons["bomb.png"]
        assert "vanished" in reasons["vanishing.png"]
        paths = {d.path for d in coll.iter_documents(with_vectors=False)}
        assert str(root / "new\nline.png") in paths and str(root / "ünïcødé 猫.png") in paths
        assert str(root) + "/caf\\xe9.png" in paths  # shown escaped, bytes kept
        assert not any(".hidden" in p or "/loop/" in p for p in paths)
        rot = {Path(d.path).name: d for d in coll.iter_documents()}
        assert (rot["rot6.jpg"].width, rot["rot6.jpg"].height) == (128, 128)
        assert rot["cmyk.jpg"].format == "JPEG" and rot["c.webp"].format == "WEBP"
    log = (coll_dir / "index-failures.log").read_text()
    assert "truncated.jpg" in log and "bomb.png" in log


def test_exif_rotated_files_index_as_upright(tmp_path, tiny):
    upright = Image.new("RGB", (160, 100), "white")
    upright.paste((220, 30, 30), (0, 0, 50, 100))  # red band on the left
    upright.save(tmp_path / "plain.png")
    save_exif_rotated(upright, tmp_path / "six.jpg", 6)
    save_exif_rotated(upright, tmp_path / "eight.jpg", 8)
    v = tiny.embed_images([tmp_path / "plain.png", tmp_path / "six.jpg", tmp_path / "eight.jpg"])
    raw = tiny.embed_pixels(np.stack([tiny.preprocess_image(Image.open(tmp_path / "six.jpg").convert("RGB"))]))
    assert float(v[0] @ v[1]) > 0.99 and float(v[0] @ v[2]) > 0.99
    assert float(v[0] @ v[1]) > float(v[0] @ raw[0]) + 0.01  # ignoring EXIF would give another vector


def test_incremental_runs(tmp_path, tiny):
    root = tmp_path / "p"
    root.mkdir()
    for i in range(6):
        scene_image(i).save(root / f"{i}.png")
    with Collection.create(tmp_path / "c") as coll:
        first = Indexer(coll, tiny).run([root])
        assert (first.indexed, first.unchanged) == (6, 0)
        again = Indexer(coll, tiny).run([root])
        assert (again.indexed, again.unchanged, again.reused, again.removed) == (0, 6, 0, 0)
        shutil.copy(root / "0.png", root / "copy.png")
        (root / "1.png").rename(root / "renamed.png")
        (root / "2.png").unlink()
        scene_image(20).save(root / "3.png")
        os.utime(root / "3.png", (time.time() + 5, time.time() + 5))
        third = Indexer(coll, tiny).run([root])
        assert (third.indexed, third.reused, third.removed, third.unchanged) == (1, 2, 2, 3)
        assert len(coll) == 6


def test_second_model_adds_its_field_to_the_same_documents(tmp_path, tiny):
    torch = need_module("torch")
    from clipseek.models.loader import export_model
    from clipseek.train import create_model

    spec = dataclasses.replace(tiny.spec, name="tiny-b", slug="tiny_b", bundled_dir=None, aliases=())
    torch.manual_seed(0)
    folder = export_model(create_model(tiny.spec), spec, tmp_path / "tiny_b")
    other = load_model(f"local-dir:{folder}")
    root = tmp_path / "p"
    root.mkdir()
    for i in range(3):
        scene_image(i).save(root / f"{i}.png")
    with Collection.create(tmp_path / "c") as coll:
        Indexer(coll, tiny).run([root])
        report = Indexer(coll, other).run([root])
        assert report.indexed == 3 and len(coll) == 3
        assert all(set(d.vectors) == {"tiny_image", "tiny_b_image"} for d in coll.iter_documents())


def test_cli_index_then_search(tmp_path):
    gallery = synth.write_dataset(tmp_path / "g", 60, seed=31)
    coll = tmp_path / "coll"
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(gallery / "images"), "--collection", str(coll), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    assert "60 indexed, 0 unchanged, 0 reused, 0 removed, 0 failed" in result.output
    name, caption = (gallery / "captions.txt").read_text().splitlines()[10].split("\t", 1)
    result = runner.invoke(main, ["search", caption, "--collection", str(coll), "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model"] == "tiny" and [h["rank"] for h in out["hits"]] == [1, 2, 3]
    assert Path(out["hits"][0]["path"]).name == name
    table = runner.invoke(main, ["search", caption, "--collection", str(coll)])
    assert table.output.splitlines()[0].split() == ["rank", "relevance", "path"]
    assert table.output.splitlines()[1].split()[2].endswith(name)
    by_image = runner.invoke(main, ["search", "--image", str(gallery / "images" / name), "--collection", str(coll),
                                    "--json", "-k", "1"])
    assert Path(json.loads(by_image.output)["hits"][0]["path"]).name == name


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["search", "x", "--collection", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "is not a clipseek collection" in missing.output
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"")
    result = runner.invoke(main, ["index", str(only_bad), "--collection", str(tmp_path / "c"), "--model", "tiny"])
    assert result.exit_code == 1 and "x.jpg: empty file" in result.output


def test_killed_index_run_resumes(tmp_path):
    gallery = synth.write_dataset(tmp_path / "g", 300, seed=5)
    coll = tmp_path / "c"
    cmd = [sys.executable, "-m", "clipseek.cli", "index", str(gallery / "images"), "--collection", str(coll),
           "--model", "tiny", "--batch-size", "16"]
    env = dict(os.environ, CLIPSEEK_PROGRESS_SECONDS="0")  # a line after each committed batch
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:  # "indexing: 32/300 (...)": 32 committed
        if line.startswith("indexing: ") and int(line.split()[1].split("/")[0]) >= 32:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Collection.open(coll, readonly=True) as c:
        partial = len(c)
    assert 32 <= partial < 300
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{300 - partial} indexed, {partial} unchanged" in done.stdout
    with Collection.open(coll) as c:
        assert len(c) == 300 and all("tiny_image" in d.vectors for d in c.iter_documents())


def test_ctrl_c_exits_cleanly_with_the_summary_so_far(tmp_path):
    gallery = synth.write_dataset(tmp_path / "g", 1000, seed=6)
    coll = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "clipseek.cli", "index", str(gallery / "images"), "--collection",
                             str(coll), "--model", "tiny", "--batch-size", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, CLIPSEEK_PROGRESS_SECONDS="0"))
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # interrupt once the first batch is committed
        seen.append(line)
        if line.startswith("indexing: ") and not line.startswith("indexing: 0/"):
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 130, out
    assert "interrupted: " in out and "Traceback" not in out
    with Collection.open(coll) as c:  # consistent, and a re-run finishes the job
        assert len(c) < 1000
    rerun = subprocess.run([sys.executable, "-m", "clipseek.cli", "index", str(gallery / "images"), "--collection",
                            str(coll), "--model", "tiny"], capture_output=True, text=True, check=True)
    assert "0 failed" in rerun.stdout
    with Collection.open(coll) as c:
        assert len(c) == 1000


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_rotated_non_square_photo_is_stored_with_its_upright_size(tmp_path, tiny, orientation):
    """A camera held sideways stores 100x160 pixels and says 'rotate': the document says 160x100, as shown."""
    upright = Image.new("RGB", (160, 100), "white")
    upright.paste((220, 30, 30), (0, 0, 50, 100))
    folder = tmp_path / "p"
    folder.mkdir()
    save_exif_rotated(upright, folder / "r.jpg", orientation)
    stored = Image.open(folder / "r.jpg").size
    assert stored == ((100, 160) if orientation in (6, 8) else (160, 100))
    with Collection.create(tmp_path / "c") as coll:
        Indexer(coll, tiny).run([folder])
        (doc,) = list(coll.iter_documents(with_vectors=False))
    assert (doc.width, doc.height, doc.format) == (160, 100, "JPEG")


def test_cli_search_options_not_in_min_relevance_paths_only_open(tmp_path, tiny):
    """The page's and the API's options on the command line, checked against the Python API."""
    import os
    import stat

    from clipseek.collection import Collection, Filter
    from clipseek.models import l2_normalize

    gallery = synth.write_dataset(tmp_path / "g", 40, seed=5)
    sub = gallery / "images" / "sub"
    sub.mkdir()
    for name in [n for n in sorted(os.listdir(gallery / "images")) if n.endswith(".png")][:10]:
        os.rename(gallery / "images" / name, sub / name)
    odd = sub / "two\nlines.png"  # a file name with a newline: --paths-only -0 keeps it whole
    os.rename(sub / sorted(os.listdir(sub))[0], odd)
    coll = tmp_path / "coll"
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(gallery / "images"), "--collection", str(coll), "--model", "tiny"]
                         ).exit_code == 0

    def search(*args):
        result = runner.invoke(main, ["search", "a red circle", "--collection", str(coll), *args])
        assert result.exit_code == 0, result.output
        return result.output

    query = l2_normalize(tiny.embed_texts(["a red circle"])[0] - 0.5 * tiny.embed_texts(["blue"])[0])
    with Collection.open(coll, readonly=True) as c:
        want = [h.fields["path"] for h in c.search(query, field="tiny_image", hits=5).hits]
        inside = [h.fields["path"] for h in c.search(tiny.embed_texts(["a red circle"])[0], field="tiny_image",
                                                     hits=40, filter=Filter(folder=str(sub))).hits]
    negated = json.loads(search("--not", "blue", "--json", "-k", "5"))["hits"]
    plain = json.loads(search("--json", "-k", "5"))["hits"]
    got = [h["path"] for h in negated]
    # --not changes every score; whether it reorders these five depends on the gallery, so the scores are compared
    assert got == want and [h["relevance"] for h in negated] != [h["relevance"] for h in plain]

    whole = search("--in", str(sub), "--paths-only", "-0", "-k", "40")
    paths = whole.split("\0")
    assert paths.pop() == "" and paths == inside and len(paths) == 10 and str(odd) in paths
    assert all(p.startswith(str(sub) + "/") for p in paths)
    assert len(search("--in", str(sub), "--paths-only", "-k", "40").splitlines()) == 11  # the newline splits one
    refused = runner.invoke(main, ["search", "a red circle", "--collection", str(coll), "-0"])
    assert refused.exit_code == 2 and "add --paths-only" in refused.output

    # a relevance copied from the output as the threshold keeps its own hit (it is compared as printed)
    scores = [h["relevance"] for h in json.loads(search("--json", "-k", "40"))["hits"]]
    for cut in scores[1::4]:
        kept = json.loads(search("--json", "-k", "40", "--min-relevance", str(cut)))["hits"]
        assert len(kept) == sum(s >= cut for s in scores) and 0 < len(kept) < len(scores), cut

    # --open hands the best hit to the desktop's opener (xdg-open on Linux): a stand-in records it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opener = bin_dir / "xdg-open"
    opener.write_text(f"#!/bin/sh\necho \"$1\" >> {tmp_path / 'opened.txt'}\n")
    opener.chmod(opener.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = runner.invoke(main, ["search", "a red circle", "--collection", str(coll), "--open", "--paths-only", "-0",
                                  "-k", "3"], env=env)  # -0: the best hit may be the file whose name holds a newline
    assert result.exit_code == 0, result.output
    opened = tmp_path / "opened.txt"
    deadline = time.monotonic() + 20  # click.launch starts the opener and does not wait for it
    while not (opened.exists() and opened.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opened.read_text()[:-1] == result.output.split("\0")[0]
