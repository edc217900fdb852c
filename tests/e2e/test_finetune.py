"""`clipseek finetune`: the loss, the shifted synth domain, text mode's guarantees, WiSE-FT, resume, bad input.

Real parts throughout: the bundled tiny model's torch weights, open_clip, ONNX Runtime on the exported result,
real collections and the CLI in subprocesses (a real SIGKILL for the resume test, a real full tmpfs for the
checkpoint test).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipseek import synth
from clipseek.evaluate import load_dataset, metrics
from clipseek.models import load_model

from ..conftest import need_module

torch = need_module("torch")
need_module("open_clip")

from clipseek.finetune import FinetuneConfig, FinetuneError, contrastive_loss, epoch_batches, finetune  # noqa: E402

TINY_DIR = Path(load_model("tiny").folder)
QUICK = FinetuneConfig(epochs=3, batch_size=64, lr=3e-4)


def env_for(tmp: Path) -> dict[str, str]:
    return {**os.environ, "CLIPSEEK_HOME": str(tmp / "home"), "CLIPSEEK_CACHE": str(tmp / "cache"),
            "CLIPSEEK_THREADS": "2"}


def cli(*args: str, tmp: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "clipseek.cli", *args], env=env_for(tmp), capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def r_at_1(encoder, folder: Path) -> float:
    data = load_dataset(folder, "all")
    image = encoder.embed_images([folder / "images" / n for n in data.images])
    row = {n: i for i, n in enumerate(data.images)}
    text = encoder.embed_texts([c for _, c in data.queries])
    return metrics("", text, image, np.asarray([row[n] for n, _ in data.queries])).recall["R@1"]


# ------------------------------------------------------------------------------------------------ the loss

def reference_loss(text: np.ndarray, image: np.ndarray, ids: np.ndarray, scale: float) -> float:
    """Written out by hand: each caption against the *distinct* images of the batch, each image against the
    captions that are not its own other captions."""
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    v = image / np.linalg.norm(image, axis=1, keepdims=True)
    s = scale * t @ v.T
    t2i, i2t = [], []
    for b in range(len(t)):
        cols = [j for j in range(len(t)) if j == b or ids[j] != ids[b]]
        t2i.append(-s[b, b] + np.log(np.sum(np.exp(s[b, cols]))))
        i2t.append(-s[b, b] + np.log(np.sum(np.exp(s[cols, b]))))
    return float((np.mean(t2i) + np.mean(i2t)) / 2)


def test_a_captions_own_image_is_never_its_negative():
    rng = np.random.default_rng(3)
    text = rng.normal(size=(6, 8)).astype(np.float32)
    base = rng.normal(size=(4, 8)).astype(np.float32)
    ids = np.array([0, 1, 0, 2, 3, 1])  # captions 0 and 2 share image 0; 1 and 5 share image 1
    image = base[ids]
    got = float(contrastive_loss(torch.from_numpy(text), torch.from_numpy(image), torch.from_numpy(ids),
                                 torch.tensor(np.log(10.0))))
    assert got == pytest.approx(reference_loss(text, image, ids, 10.0), rel=1e-5)
    # Counting the duplicate columns (CLIP's plain loss) would give another value: the mask matters here.
    plain = reference_loss(text, image, np.arange(6), 10.0)
    assert abs(got - plain) > 1e-3


# ------------------------------------------------------------------------------------------------ the domain

def test_an_epoch_uses_each_caption_once_in_batches_of_like_length(flickr):
    from clipseek.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(77)
    captions = [line.split("\t", 1)[1] for line in (flickr / "captions.txt").read_text().splitlines()[:20000]]
    lengths = tokenizer.lengths(tokenizer(captions))
    batches = epoch_batches(lengths, 128, np.random.default_rng([7, 0]))
    flat = np.concatenate(batches)
    assert len(batches) == len(captions) // 128 and all(len(b) == 128 for b in batches)
    assert len(set(flat.tolist())) == len(flat)  # nobody twice
    again = epoch_batches(lengths, 128, np.random.default_rng([7, 0]))
    assert all((a == b).all() for a, b in zip(batches, again))  # the seed decides (resume relies on it)
    assert not all((a == b).all() for a, b in zip(batches, epoch_batches(lengths, 128, np.random.default_rng([7, 1]))))
    random_max = np.mean([lengths[b].max() for b in np.array_split(np.random.default_rng(0).permutation(
        len(captions))[: len(flat)], len(batches))])
    assert np.mean([lengths[b].max() for b in batches]) < 0.7 * random_max  # what the text tower runs to
    assert [len(b) for b in epoch_batches(lengths[:50], 128, np.random.default_rng(0))] == [50]


def test_the_shifted_register_shares_no_attribute_word_and_names_one_image():
    original = {*synth.SHAPES, *synth.COLOURS, *synth.BACKGROUNDS, *synth.SIZES, *synth.POSITIONS,
                "middle", "above", "below", "under", "underneath", "next", "background", "picture", "shapes",
                "stacked", "sits", "coloured"}
    owner: dict[str, str] = {}
    for value, words in synth.SHIFTED_WORDS.items():
        for w in words:
            assert owner.setdefault(w, value) == value  # one synonym, one value
    rng = __import__("random").Random(9)
    for scene in synth.sample_scenes(300, seed=9):
        for caption in synth.captions(scene, rng, "shifted"):
            assert not set(re.findall(r"[a-z]+", caption)) & original, caption
            named = {owner[w] for w in synth.SHIFTED_WORDS_FLAT if re.search(rf"\b{w}\b", caption)}
            wanted = {scene.shape, scene.colour, scene.background, scene.size, *(scene.second or ())} - {None}
            assert named == wanted, caption


def test_base_tiny_is_clearly_worse_on_the_shifted_domain(tmp_path):
    original = synth.write_dataset(tmp_path / "o", 200, seed=881)
    shifted = synth.write_dataset(tmp_path / "s", 200, seed=881, variant="shifted")
    encoder = load_model("tiny")
    assert r_at_1(encoder, shifted) < r_at_1(encoder, original) - 0.4


# ------------------------------------------------------------------------------------------------ text mode

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A text-mode run with the command's defaults on 1000 shifted scenes, and a short one published at α = 0."""
    base = tmp_path_factory.mktemp("ft")
    train = synth.write_dataset(base / "train", 1000, seed=5150, variant="shifted")
    out = finetune(train, "tiny", base / "tuned", progress=False)
    zero = finetune(train, "tiny", base / "zero", FinetuneConfig(**{**QUICK.__dict__, "wise_alpha": 0.0}),
                    progress=False)
    return base, out, zero


def test_text_mode_keeps_the_base_image_tower_byte_for_byte(tuned):
    _, out, _ = tuned
    assert (out.out / "image.onnx").read_bytes() == (TINY_DIR / "image.onnx").read_bytes()
    assert (out.out / "text.onnx").read_bytes() != (TINY_DIR / "text.onnx").read_bytes()
    manifest = json.loads((out.out / "clipseek.json").read_text())
    assert manifest["spec"]["image_model"] == "tiny" and manifest["spec"]["slug"] == "tiny"
    record = manifest["finetune"]
    assert record["base"] == "tiny" and record["mode"] == "text" and len(record["data_fingerprint"]) == 64
    assert record["export_parity_cos"] >= 0.9999 and record["epoch_losses"][-1] < record["epoch_losses"][0]


def test_alpha_zero_reproduces_the_base_model(tuned):
    base, out, zero = tuned
    captions = [c for _, c in load_dataset(base / "train", "all").queries[:200]] + ["a crimson disc", "zebra"]
    want = load_model("tiny").embed_texts(captions)
    assert np.abs(load_model(f"local-dir:{zero.out}").embed_texts(captions) - want).max() < 1e-5
    # ... and the tuned one does not (so the comparison above can fail)
    assert np.abs(load_model(f"local-dir:{out.out}").embed_texts(captions) - want).max() > 0.1
    assert zero.before == zero.after and zero.alpha == 0.0


def test_the_tuned_text_model_searches_a_collection_indexed_with_the_base(tuned, tmp_path):
    from click.testing import CliRunner

    from clipseek.cli import main

    base, out, _ = tuned
    gallery = synth.write_dataset(tmp_path / "g", 60, seed=5151, variant="shifted")
    coll = tmp_path / "c"
    cli("index", str(gallery / "images"), "--collection", str(coll), "--model", "tiny", tmp=tmp_path)
    # Indexing again with the tuned model re-embeds nothing: its image vectors are the base's.
    again = cli("index", str(gallery / "images"), "--collection", str(coll), "--model", f"local-dir:{out.out}",
                tmp=tmp_path)
    assert "0 indexed, 60 unchanged" in again.stdout
    data = load_dataset(gallery, "all")
    found = {"tiny": 0, f"local-dir:{out.out}": 0}
    runner = CliRunner()
    for name, caption in data.queries[::5]:
        for model in found:
            run = runner.invoke(main, ["search", caption, "--collection", str(coll), "--model", model, "--json",
                                       "-k", "1"])
            assert run.exit_code == 0, run.output
            found[model] += Path(json.loads(run.output)["hits"][0]["path"]).name == name
    assert found[f"local-dir:{out.out}"] >= found["tiny"] + 3, found


def test_the_server_answers_input_queries_with_the_tuned_text_model(tuned, tmp_path):
    from starlette.testclient import TestClient

    from clipseek.server.app import create_app

    base, out, _ = tuned
    gallery = synth.write_dataset(tmp_path / "g", 40, seed=5152, variant="shifted")
    cli("index", str(gallery / "images"), "--collection", str(tmp_path / "c"), "--model", "tiny", tmp=tmp_path)
    data = load_dataset(gallery, "all")
    tops = {}
    for model in ("tiny", f"local-dir:{out.out}"):
        app = create_app(tmp_path / "c", default_model=model, allow_hosts=["testserver"])
        with TestClient(app) as client:
            right = 0
            for name, caption in data.queries[::4]:
                r = client.get("/search/", params={"input": caption, "queryProfile": "tiny", "hits": 1})
                assert r.status_code == 200, r.text
                right += Path(r.json()["root"]["children"][0]["fields"]["path"]).name == name
                r = client.get("/api/search", params={"q": caption, "k": 1})
                assert r.status_code == 200, r.text
            tops[model] = right
    assert tops[f"local-dir:{out.out}"] >= tops["tiny"] + 3, tops


# ------------------------------------------------------------------------------------------------ the gain

def test_defaults_lift_tiny_on_a_fresh_shifted_set_and_keep_the_original(tuned, tmp_path):
    """The small version of bench/finetune.py: 1000 training scenes, the defaults, fresh evaluation sets of 300."""
    _, result, _ = tuned
    base, tuned_model = load_model("tiny"), load_model(f"local-dir:{result.out}")
    shifted = synth.write_dataset(tmp_path / "s", 300, seed=6002, variant="shifted")
    original = synth.write_dataset(tmp_path / "o", 300, seed=6003)
    assert r_at_1(tuned_model, shifted) >= r_at_1(base, shifted) + 0.15
    assert r_at_1(tuned_model, original) >= r_at_1(base, original) - 0.05


# ------------------------------------------------------------------------------------------------ full mode

def test_full_mode_trains_both_towers_into_a_field_of_its_own(tuned, tmp_path):
    base, _, _ = tuned
    result = finetune(base / "train", "tiny", tmp_path / "full",
                      FinetuneConfig(mode="full", epochs=2, batch_size=64, lr=3e-4, wise_alpha=1.0), progress=False)
    manifest = json.loads((result.out / "clipseek.json").read_text())
    spec, record = manifest["spec"], manifest["finetune"]
    assert spec["slug"].startswith("tiny_ft_") and spec["image_model"] is None
    assert record["mode"] == "full" and record["export_parity_cos"] >= 0.9999
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
    tuned_model = load_model(f"local-dir:{result.out}")
    gallery = synth.write_dataset(tmp_path / "g", 40, seed=5160, variant="shifted")
    paths = sorted((gallery / "images").iterdir())
    moved = np.sum(tuned_model.embed_images(paths) * load_model("tiny").embed_images(paths), axis=1)
    assert moved.min() < 0.99  # the image tower was trained, not copied
    # A collection indexed with the base gains the tuned model's own field: every image is embedded again.
    coll = tmp_path / "c"
    cli("index", str(gallery / "images"), "--collection", str(coll), "--model", "tiny", tmp=tmp_path)
    again = cli("index", str(gallery / "images"), "--collection", str(coll), "--model", f"local-dir:{result.out}",
                tmp=tmp_path)
    assert "40 indexed" in again.stdout, again.stdout


# ------------------------------------------------------------------------------------------------ resume

def test_a_run_killed_mid_way_continues_to_the_same_model(tmp_path):
    train = synth.write_dataset(tmp_path / "train", 200, seed=6100, variant="shifted")
    args = ["finetune", str(train), "--model", "tiny", "--epochs", "3", "--batch-size", "32", "--lr", "3e-4",
            "--wise-alpha", "0.8"]
    whole = cli(*args, "--out", str(tmp_path / "whole"), "--json", tmp=tmp_path)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "clipseek.cli", *args, "--out", str(out)], env=env_for(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (Path(f"{out}.partial") / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    resumed = cli(*args, "--out", str(out), tmp=tmp_path)
    assert "resuming from the checkpoint of epoch" in resumed.stderr
    record = json.loads(whole.stdout)
    again = json.loads((out / "clipseek.json").read_text())["finetune"]
    assert again["epoch_losses"] == pytest.approx(record["epoch_losses"], abs=1e-4)
    assert again["test_after"] == pytest.approx(record["test_after"], abs=0.01)
    captions = ["a crimson disc at nine o'clock", "ebony backdrop; jade box west, navy orb east"]
    a = load_model(f"local-dir:{out}").embed_texts(captions)
    b = load_model(f"local-dir:{tmp_path / 'whole'}").embed_texts(captions)
    assert np.abs(a - b).max() < 1e-3


# ------------------------------------------------------------------------------------------------ bad input

def test_missing_images_and_empty_captions_are_counted_and_skipped(tmp_path):
    train = synth.write_dataset(tmp_path / "train", 120, seed=6200, variant="shifted")
    with open(train / "captions.txt", "a", encoding="utf-8") as fh:
        fh.write("gone.jpg\ta crimson disc\nother-gone.jpg\tan azure box\n")
        fh.write(f"{sorted((train / 'images').iterdir())[0].name}\t   \n")
    (train / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    with open(train / "captions.txt", "a", encoding="utf-8") as fh:
        fh.write("broken.jpg\ta plum wedge\n")
    proc = cli("finetune", str(train), "--model", "tiny", "--out", str(tmp_path / "t"), "--epochs", "1",
               "--wise-alpha", "1", tmp=tmp_path)
    assert "dropped 2: caption names an image that does not exist" in proc.stdout
    assert "dropped 1: empty caption" in proc.stdout
    assert "broken.jpg" in proc.stdout and "Traceback" not in proc.stderr


def test_too_few_pairs_an_existing_out_and_an_unavailable_base_are_refused_in_words(tmp_path):
    small = synth.write_dataset(tmp_path / "small", 9, seed=6300, variant="shifted")
    proc = cli("finetune", str(small), "--model", "tiny", "--out", str(tmp_path / "t"), tmp=tmp_path, check=False)
    assert proc.returncode != 0 and "at least 50" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("mine")
    train = synth.write_dataset(tmp_path / "train", 100, seed=6301, variant="shifted")
    proc = cli("finetune", str(train), "--model", "tiny", "--out", str(tmp_path / "exists"), tmp=tmp_path, check=False)
    assert proc.returncode != 0 and "--force" in proc.stderr
    assert (tmp_path / "exists" / "keep.txt").read_text() == "mine"
    env = {**env_for(tmp_path), "CLIPSEEK_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "clipseek.cli", "finetune", str(train), "--model", "ViT-B/32",
                           "--out", str(tmp_path / "v")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "clipseek models fetch ViT-B/32" in proc.stderr, proc.stderr
    with pytest.raises(FinetuneError, match="between 0 and 1"):
        finetune(train, "tiny", tmp_path / "a", FinetuneConfig(wise_alpha=1.5))


def test_without_torch_the_error_names_the_extra(tmp_path):
    train = synth.write_dataset(tmp_path / "train", 60, seed=6400, variant="shifted")
    code = ("import sys; sys.modules['torch'] = None; from clipseek.cli import main; "
            f"sys.argv = ['clipseek', 'finetune', {str(train)!r}, '--model', 'tiny', "
            f"'--out', {str(tmp_path / 'o')!r}]; "
            "main()")
    proc = subprocess.run([sys.executable, "-c", code], env=env_for(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "clipseek[export]" in proc.stderr and "Traceback" not in proc.stderr


DISK_FULL = """
set -e
mount -t tmpfs -o size=$SIZE tmpfs "$DIR"
set +e
"$PY" -m clipseek.cli finetune "$DATA" --model tiny --out "$DIR/t" --epochs 3 --batch-size 64 --wise-alpha 1 \
    > "$OUT/first.out" 2> "$OUT/first.err"
echo $? > "$OUT/first.rc"
ls "$DIR/t.partial" > "$OUT/left"
mount -o remount,size=400m "$DIR"
"$PY" -m clipseek.cli finetune "$DATA" --model tiny --out "$DIR/t" --epochs 3 --batch-size 64 --wise-alpha 1 \
    > "$OUT/second.out" 2> "$OUT/second.err"
echo $? > "$OUT/second.rc"
"""


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    """Room for the cached vectors and one checkpoint, not two (a private tmpfs: needs root, as CI runs)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")
    train = synth.write_dataset(tmp_path / "train", 200, seed=6500, variant="shifted")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "mnt").mkdir()
    env = dict(env_for(tmp_path), DIR=str(tmp_path / "mnt"), OUT=str(out), PY=sys.executable, DATA=str(train),
               SIZE="90m")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", DISK_FULL], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    first = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() != "0"
    assert "disk full" in first and "checkpoint of epoch 1 is intact" in first and "Traceback" not in first, first
    assert "checkpoint.pt" in (out / "left").read_text()
    second = (out / "second.err").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second
    assert "resuming from the checkpoint of epoch 1" in second
