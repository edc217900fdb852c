"""The document's attributes come from one table (clipseek.schema); everything that lists them agrees with it."""

import dataclasses
import sqlite3
import typing

import numpy as np
import pytest

from clipseek import schema
from clipseek.collection import Collection, Document
from clipseek.schema import ModelNames
from clipseek.server.openapi import SPEC
from clipseek.summaries import SUMMARY_FIELDS
from clipseek.vespa.export import schema_text


def test_document_has_exactly_the_schema_attributes_in_order_and_type():
    fields = {f.name: f for f in dataclasses.fields(Document)}
    own = [n for n in fields if n not in ("docid", "vectors", "extra", "namespace")]
    assert own == list(schema.NAMES)
    hints = typing.get_type_hints(Document)
    for attribute in schema.ATTRIBUTES:
        assert hints[attribute.name] == (attribute.python | None), attribute.name
    assert SUMMARY_FIELDS == schema.NAMES


def test_table_openapi_and_vespa_schema_are_generated_from_it(tmp_path):
    with Collection.create(tmp_path / "c") as c:
        c.add_field("tiny_image", "tiny", 4)
        c.feed([Document("a", vectors={"tiny_image": np.ones(4, np.float32)})])
        sd = schema_text(c)
    db = sqlite3.connect(tmp_path / "c" / "collection.sqlite")
    columns = {row[1]: row[2] for row in db.execute("PRAGMA table_info(documents)")}
    hit = _hit_properties(SPEC)
    for attribute in schema.ATTRIBUTES:
        assert columns[attribute.name] == attribute.sql
        assert f"field {attribute.name} type {attribute.vespa}" in sd, attribute.name
        assert hit[attribute.name] == {"type": attribute.json}


def _hit_properties(node):
    """The properties of the OpenAPI description's hit object (the one with a thumbnail)."""
    if isinstance(node, dict):
        if "thumbnail" in node.get("properties", {}):
            return node["properties"]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _hit_properties(child)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("slug", ["vit_b_32", "tiny", "rn50x4"])
def test_model_names_round_trip(slug):
    names = ModelNames(slug)
    assert (names.image_field, names.text_tensor, names.rank_profile) == (
        f"{slug}_image", f"{slug}_text", f"{slug}_similarity")
    assert ModelNames.of_field(names.image_field) == names
    assert ModelNames.of_profile(names.rank_profile) == names
    assert ModelNames.for_field(names.image_field) == names


def test_model_names_of_other_names():
    assert ModelNames.of_field("vectors") is None and ModelNames.of_field("_image") is None
    assert ModelNames.of_profile("default") is None and ModelNames.of_profile("_similarity") is None
    assert ModelNames.for_field("vectors").slug == "vectors"
