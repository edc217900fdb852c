"""Backends and precisions: OpenVINO against ONNX Runtime on the same exported towers, the automatic choice,
`clipseek models check` and the record it writes, the overrides (flags, environment), and the errors.

Real parts: OpenVINO's CPU plugin and ONNX Runtime sessions on the bundled tiny model, the CLI in-process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipseek import synth
from clipseek.cli import main
from clipseek.errors import ModelError
from clipseek.evaluate import load_dataset, metrics
from clipseek.models import OpenVinoEncoder, Runtime, choose, load_model, open_encoder
from clipseek.models.check import read_record, record_path
from clipseek.models.runtime import cpu_has_bf16, fastest_passing

from ..conftest import need_module

need_module("openvino")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return synth.write_dataset(tmp_path_factory.mktemp("rt") / "s", 300, seed=9090)


def tiny_folder():
    return load_model("tiny", backend="onnxruntime").folder


def recall(encoder, folder) -> dict[str, float]:
    data = load_dataset(folder, "all")
    image = encoder.embed_images([folder / "images" / n for n in data.images])
    row = {n: i for i, n in enumerate(data.images)}
    text = encoder.embed_texts([c for _, c in data.queries])
    return metrics("", text, image, np.asarray([row[n] for n, _ in data.queries])).recall


def test_openvino_runs_the_same_towers_as_onnx_runtime(scenes):
    folder = tiny_folder()
    ort = open_encoder(folder, runtime=Runtime("onnxruntime", "fp32"))
    ov = open_encoder(folder, runtime=Runtime("openvino", "fp32"))
    assert ort.describe() == "onnxruntime fp32 on cpu" and ov.describe() == "openvino fp32 on cpu"
    assert OpenVinoEncoder(folder, precision="fp32").runtimes == ov.runtimes
    data = load_dataset(scenes, "all")
    texts = [c for _, c in data.queries[:300]] + ["a" * 300, "", "zebra"]
    images = [scenes / "images" / n for n in data.images[:100]]
    assert np.sum(ov.embed_texts(texts) * ort.embed_texts(texts), axis=1).min() >= 0.9999
    assert np.sum(ov.embed_images(images) * ort.embed_images(images), axis=1).min() >= 0.9999
    # the text tower's dynamic sequence length: the early exit is exact in OpenVINO too
    tokens = ov.tokenizer(texts[:50])
    full = ov._encode_tokens(tokens)
    cut = ov.embed_tokens(tokens)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    assert tokens.shape[1] == 77 and np.abs(cut - full).max() < 1e-5


def test_the_default_keeps_recall_of_fp32_through_the_whole_pipeline(scenes):
    auto = load_model("tiny")
    fp32 = load_model("tiny", backend="onnxruntime", precision="fp32")
    assert auto.runtimes["image"] == choose() and fp32.runtimes["text"].backend == "onnxruntime"
    got, want = recall(auto, scenes), recall(fp32, scenes)
    assert all(abs(got[k] - want[k]) <= 0.005 for k in ("R@1", "R@5", "R@10")), (got, want)


def test_threads_reach_openvino():
    ov = open_encoder(tiny_folder(), runtime=Runtime("openvino", "fp32"), threads=1)
    assert ov._run["image"].compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_the_compiled_model_cache_is_keyed_by_the_files(isolated_dirs):
    folder = tiny_folder()
    open_encoder(folder, runtime=Runtime("openvino", "fp32"))
    cache = isolated_dirs / "cache" / "openvino"
    dirs = sorted(p.name for p in cache.iterdir())
    assert all(any((cache / d).iterdir()) for d in dirs)  # each holds a compiled blob
    files = json.loads((folder / "clipseek.json").read_text())["files"]
    # keyed by the towers' checksums: a re-export or fine-tune (other bytes) never finds a stale blob
    assert dirs == sorted(f"{files[t][:24]}-fp32" for t in ("text.onnx", "image.onnx"))


def test_a_cache_folder_that_cannot_be_made_costs_the_cache_not_the_model(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder cannot be made under a file, even by root
    monkeypatch.setenv("CLIPSEEK_CACHE", str(blocked / "cache"))
    ov = open_encoder(tiny_folder(), runtime=Runtime("openvino", "fp32"))
    fp32 = open_encoder(tiny_folder(), runtime=Runtime("onnxruntime", "fp32"))
    captions = ["a red circle", "two blue squares on grey"]
    assert np.abs(ov.embed_texts(captions) - fp32.embed_texts(captions)).max() < 1e-4


def test_bf16_read_from_the_cpu_flags_agrees_with_openvino():
    import openvino as ov

    assert cpu_has_bf16() == ("BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def test_bf16_where_the_cpu_has_it_and_a_clear_refusal_where_not():
    if cpu_has_bf16():
        assert choose(precision="bf16").backend == "openvino" and choose().precision == "bf16"
        encoder = load_model("tiny", precision="bf16")
        assert {(r.backend, r.precision) for r in encoder.runtimes.values()} == {("openvino", "bf16")}
        captions = ["a red circle", "two blue squares on grey"]
        fp32 = load_model("tiny", backend="onnxruntime", precision="fp32")
        assert np.sum(encoder.embed_texts(captions) * fp32.embed_texts(captions), axis=1).min() > 0.99
    else:
        with pytest.raises(ModelError, match="no bf16 instructions"):
            choose(precision="bf16")


def test_bf16_is_refused_in_words_on_a_cpu_without_it_on_any_host(monkeypatch):
    from clipseek.models import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)  # the one fact a host without bf16 differs in
    with pytest.raises(ModelError, match="no bf16 instructions"):
        choose(precision="bf16")
    assert (choose().backend, choose().precision) == ("onnxruntime", "fp32")
    assert (choose(backend="openvino").backend, choose(backend="openvino").precision) == ("openvino", "fp32")


def test_the_automatic_choice_and_its_overrides(monkeypatch):
    want = ("openvino", "bf16") if cpu_has_bf16() else ("onnxruntime", "fp32")
    assert (choose().backend, choose().precision) == want
    assert (choose(backend="openvino").backend, choose(backend="openvino").precision) == \
        ("openvino", "bf16" if cpu_has_bf16() else "fp32")
    assert choose(backend="onnxruntime").backend == "onnxruntime"
    assert choose(precision="int8") == Runtime("onnxruntime", "int8", "cpu", "asked for")
    monkeypatch.setenv("CLIPSEEK_BACKEND", "onnxruntime")
    assert choose().backend == "onnxruntime"
    assert choose(backend="openvino").backend == "openvino"  # a flag beats the environment
    monkeypatch.setenv("CLIPSEEK_PRECISION", "fp16")
    with pytest.raises(ModelError, match=r"unknown precision 'fp16' \(from \$CLIPSEEK_PRECISION\)"):
        choose()
    monkeypatch.delenv("CLIPSEEK_PRECISION")
    with pytest.raises(ModelError, match="int8 runs in ONNX Runtime"):
        choose(backend="openvino", precision="int8")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ModelError, match=r"no usable CUDA GPU.*pip uninstall -y onnxruntime"):
            choose(device="cuda")


def test_int8_only_by_a_passing_check_and_only_when_faster():
    def record(int8_passed: bool, int8_speed: float, ov_speed: float = 100.0, int8_text_passed: bool = False) -> dict:
        def row(backend, precision, passed, speed, text_passed=True):
            return {"backend": backend, "precision": precision, "image_passed": passed, "images_per_s": speed,
                    "text_passed": text_passed, "text_ms": 1000.0 / speed}
        return {"variants": [row("onnxruntime", "fp32", True, 100.0), row("openvino", "fp32", True, ov_speed),
                             row("onnxruntime", "int8", int8_passed, int8_speed, int8_text_passed)]}

    assert fastest_passing(record(True, 250.0)) == ("onnxruntime", "int8")
    assert fastest_passing(record(False, 250.0)) == ("onnxruntime", "fp32")
    assert fastest_passing(record(True, 105.0)) == ("onnxruntime", "fp32")  # within noise: keep fp32
    assert fastest_passing(record(False, 250.0, ov_speed=130.0)) == ("openvino", "fp32")
    # each tower on its own: int8 images, while the text tower that failed stays on the fastest that passed
    assert fastest_passing(record(True, 250.0, ov_speed=130.0), tower="text") == ("openvino", "fp32")
    assert choose(measured=record(True, 250.0)).precision == "int8"
    assert choose(measured=record(True, 250.0), tower="text").precision == "fp32"
    assert choose(measured=record(True, 250.0, int8_text_passed=True), tower="text").precision == "int8"
    assert choose(precision="fp32", measured=record(True, 250.0)).precision == "fp32"


def test_models_check_records_agreement_and_load_model_follows_it(isolated_dirs):
    folder = tiny_folder()
    result = CliRunner().invoke(main, ["models", "check", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {(r["backend"], r["precision"]): r for r in doc["variants"]}
    assert ("onnxruntime", "int8") in rows and ("openvino", "fp32") in rows
    assert rows["onnxruntime", "fp32"]["image_passed"] and rows["onnxruntime", "fp32"]["min_cos_text"] == 1.0
    assert rows["openvino", "fp32"]["min_cos_image"] >= 0.9999 and rows["openvino", "fp32"]["text_passed"]
    assert 0.9 < rows["onnxruntime", "int8"]["min_cos_text"] < 0.9999  # int8 really ran, and really differs
    assert read_record(folder) == {k: v for k, v in doc.items() if k != "default"}
    # the record steers the default: make int8 the clear winner for images, as a machine with VNNI would
    path = record_path(folder)
    saved = json.loads(path.read_text())
    for row in saved["variants"]:
        row["image_passed"], row["images_per_s"] = True, 1000.0 if row["precision"] == "int8" else 100.0
        row["text_passed"] = row["precision"] != "int8"
    path.write_text(json.dumps(saved))
    model = load_model("tiny")
    assert model.runtimes["image"].precision == "int8" and model.runtimes["text"].precision == "fp32"
    assert model.precision == "fp32/int8"
    saved["machine"] = "another machine"
    path.write_text(json.dumps(saved))
    assert read_record(folder) is None and load_model("tiny").runtimes["image"].precision != "int8"


def test_the_server_reads_its_runtime_from_the_environment(monkeypatch):
    from clipseek.server.app import Encoders

    monkeypatch.setenv("CLIPSEEK_PRECISION", "int8")
    assert Encoders()("tiny").precision == "int8"
    monkeypatch.setenv("CLIPSEEK_PRECISION", "fp32")
    monkeypatch.setenv("CLIPSEEK_BACKEND", "onnxruntime")
    assert Encoders()("tiny").describe() == "onnxruntime fp32 on cpu"


def test_commands_take_backend_and_precision(tmp_path, scenes):
    runner = CliRunner()
    coll = tmp_path / "c"
    small = synth.write_dataset(tmp_path / "g", 30, seed=9191)
    assert runner.invoke(main, ["index", str(small / "images"), "--collection", str(coll), "--model", "tiny",
                                "--backend", "openvino"]).exit_code == 0
    tops = set()
    for flags in (["--backend", "openvino"], ["--backend", "onnxruntime", "--precision", "int8"], []):
        result = runner.invoke(main, ["search", "a red circle", "--collection", str(coll), "--json", *flags])
        assert result.exit_code == 0, result.output
        tops.add(json.loads(result.stdout)["hits"][0]["path"])
    assert len(tops) == 1
    result = runner.invoke(main, ["search", "x", "--collection", str(coll), "--backend", "openvino",
                                  "--precision", "int8"])
    assert result.exit_code == 1 and "int8 runs in ONNX Runtime" in result.output
    result = runner.invoke(main, ["search", "x", "--collection", str(coll)], env={"CLIPSEEK_BACKEND": "tensorrt"})
    assert result.exit_code == 2 and "CLIPSEEK_BACKEND" in result.output  # click names the variable
