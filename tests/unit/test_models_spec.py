"""models/spec.py (what a model is, how a reference is read) and models/fields.py (which field a search uses)."""

import json
import shutil
from pathlib import Path

import pytest

from clipseek.errors import ModelError, NoVectorsError
from clipseek.models import get_spec
from clipseek.models.fields import field_for
from clipseek.models.loader import resolve
from clipseek.models.spec import LOCAL_DIR_PREFIX, ModelSpec, parse_ref
from clipseek.vectors import FieldInfo


def test_parse_ref_reads_names_and_folders(tmp_path, monkeypatch):
    assert parse_ref("ViT-B/32").folder is None and parse_ref("ViT-B/32").canonical == "ViT-B/32"
    monkeypatch.chdir(tmp_path)
    ref = parse_ref(f"{LOCAL_DIR_PREFIX}models/mine")
    assert ref.folder == Path("models/mine")
    assert ref.canonical == f"{LOCAL_DIR_PREFIX}{tmp_path / 'models' / 'mine'}"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_ref(f"{LOCAL_DIR_PREFIX}~/m").folder == tmp_path / "m"


def test_a_spec_with_another_resize_mode_is_refused_by_name():
    data = get_spec("tiny").to_dict()
    assert ModelSpec.from_dict(data).preprocess.resize_mode == "shortest"
    data["resize_mode"] = "squash"
    with pytest.raises(ModelError, match="resize_mode 'squash'"):
        ModelSpec.from_dict(data)


def test_a_local_dir_spec_with_another_resize_mode_is_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(resolve("tiny"), folder)
    manifest = json.loads((folder / "clipseek.json").read_text())
    manifest["spec"]["resize_mode"] = "longest"
    (folder / "clipseek.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="resize_mode 'longest'"):
        get_spec(f"{LOCAL_DIR_PREFIX}{folder}")


FIELDS = {"vit_b_32_image": FieldInfo("vit_b_32_image", "ViT-B/32", 512),
          "tiny_image": FieldInfo("tiny_image", "tiny", 64)}


def test_field_for_default_and_the_collections_own_names():
    assert field_for(FIELDS, None).field.name == "vit_b_32_image"
    assert field_for(FIELDS, None, default="tiny").field.name == "tiny_image"
    only = {"tiny_image": FIELDS["tiny_image"]}
    assert field_for(only, None).field.name == "tiny_image"  # no default model's field: the first by name
    for asked in ("tiny", "tiny_image"):
        choice = field_for(FIELDS, asked)
        assert (choice.field.name, choice.encoder) == ("tiny_image", "tiny")


def test_field_for_registry_names_and_aliases():
    choice = field_for(FIELDS, "vit-b/32")  # an alias, any case: the field of the model it names
    assert choice.field.name == "vit_b_32_image" and choice.encoder == "vit-b/32"
    assert field_for(FIELDS, "vit_b_32").field.name == "vit_b_32_image"  # the slug


def test_field_for_errors_say_what_to_index():
    with pytest.raises(NoVectorsError, match="no images yet"):
        field_for({}, None)
    with pytest.raises(NoVectorsError, match=r"no vectors of model RN50 .*clipseek index PATH --model RN50"):
        field_for(FIELDS, "RN50")
    with pytest.raises(NoVectorsError, match="no vectors of model nonesuch"):
        field_for(FIELDS, "nonesuch")


def test_field_for_a_local_dir_model(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(resolve("tiny"), folder)
    canonical = f"{LOCAL_DIR_PREFIX}{folder.resolve()}"
    fields = {"tiny_image": FieldInfo("tiny_image", canonical, 64)}
    choice = field_for(fields, f"{LOCAL_DIR_PREFIX}{folder}")
    assert choice.field.name == "tiny_image"
    with pytest.raises(ModelError):  # a folder that is no model is that error, not "no vectors"
        field_for(fields, f"{LOCAL_DIR_PREFIX}{tmp_path / 'nothing'}")


def test_field_for_a_text_only_fine_tune_searches_its_base_models_field_with_its_own_text_tower(tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(resolve("tiny"), folder)
    manifest = json.loads((folder / "clipseek.json").read_text())
    manifest["spec"].update(name="tiny-tuned", image_model="tiny")
    (folder / "clipseek.json").write_text(json.dumps(manifest))
    ref = f"{LOCAL_DIR_PREFIX}{folder}"
    choice = field_for(FIELDS, ref)
    assert (choice.field.name, choice.encoder) == ("tiny_image", ref)
