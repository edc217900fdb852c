from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clipseek import available_models, get_spec, load_model
from clipseek.cli import main
from clipseek.errors import ModelError, ModelNotAvailableError, UnknownModelError

OPENAI_MODELS = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


def test_registry_has_openai_nine_and_open_clip_weights():
    names = [s.name for s in available_models()]
    for name in OPENAI_MODELS + ["ViT-B-32/laion2b_s34b_b79k", "ViT-B-16/laion2b_s34b_b88k"]:
        assert name in names
    assert len({s.slug for s in available_models()}) == len(names)  # slugs name vector fields: unique


def test_lookup_by_alias_slug_and_case():
    assert get_spec("vit-b/32").slug == "vit_b_32"
    assert get_spec("vit_b_32").name == "ViT-B/32"
    assert get_spec("ViT-B-32").name == "ViT-B/32"
    spec = get_spec("RN50x64")
    assert (spec.embed_dim, spec.image_size, spec.field_name) == (1024, 448, "rn50x64_image")
    # the weights: open_clip's safetensors on the hub, where open_clip 3.3's pretrained table points
    assert spec.weights == {"hf_hub": "timm/resnet50x64_clip.openai", "filename": "open_clip_model.safetensors"}
    assert spec.tower_config["vision_cfg"]["layers"] == [3, 15, 36, 10]  # the architecture, as data


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as info:
        get_spec("ViT-H/99")
    assert "ViT-B/32" in str(info.value) and "RN50x16" in str(info.value)


def test_offline_without_cache_says_what_to_do(isolated_dirs, monkeypatch):
    monkeypatch.setenv("CLIPSEEK_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("ViT-B/32")
    msg = str(info.value)
    assert "ViT-B/32" in msg and str(isolated_dirs / "cache") in msg and "clipseek models fetch ViT-B/32" in msg


def test_real_download_attempt_fails_clearly_without_network(isolated_dirs):
    # This machine has no route to the weights host: the real download code runs and fails fast.
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("RN50")
    assert "download failed" in str(info.value) and "clipseek models fetch RN50" in str(info.value)


def test_local_dir_without_manifest(tmp_path):
    with pytest.raises(ModelError, match="not an exported clipseek model"):
        load_model(f"local-dir:{tmp_path}")


def test_cli_lists_models():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for name in OPENAI_MODELS:
        assert name in result.output
    assert "ViT-B/32 (default)" in result.output


def test_cli_models_json_and_info():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0
    assert {m["slug"] for m in json.loads(result.output)} >= {"vit_b_32", "rn50"}
    info = json.loads(CliRunner().invoke(main, ["models", "info", "rn50"]).output)
    assert info["field"] == "rn50_image" and info["embed_dim"] == 1024


def test_cli_unknown_model_is_one_line_error():
    result = CliRunner().invoke(main, ["models", "info", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown model 'nope'")
