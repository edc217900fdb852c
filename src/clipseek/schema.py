"""The ``image_search`` document's attributes, in one place: name, Python type, SQL column type, Vespa field type,
and JSON type. The SQL table, :class:`clipseek.collection.Document`'s summary, the filters, the native API's
OpenAPI description and the Vespa schema are all read from here (a test checks ``Document`` against it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attribute:
    name: str
    python: type
    sql: str
    vespa: str
    doc: str

    @property
    def numeric(self) -> bool:
        return self.python in (int, float)

    @property
    def json(self) -> str:
        return {int: "integer", float: "number", str: "string"}[self.python]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("image_file_name", str, "TEXT", "string", "the file's name (the summary field Vespa's sample app shows)"),
    Attribute("path", str, "TEXT", "string", "the file's path, as text"),
    Attribute("size", int, "INTEGER", "long", "bytes"),
    Attribute("mtime", float, "REAL", "double", "the file's modification time, epoch seconds"),
    Attribute("content_hash", str, "TEXT", "string", "SHA-256 of the file's bytes"),
    Attribute("width", int, "INTEGER", "int", "pixels, upright"),
    Attribute("height", int, "INTEGER", "int", "pixels, upright"),
    Attribute("format", str, "TEXT", "string", "JPEG, PNG, HEIF, DNG, ..."),
    Attribute("indexed_at", float, "REAL", "double", "when clipseek indexed it, epoch seconds"),
    Attribute("taken", float, "REAL", "double", "when the photo was taken, epoch seconds (see clipseek.exif)"),
    Attribute("taken_tz", str, "TEXT", "string", "the offset the camera recorded, like +02:00; absent if none"),
    Attribute("taken_source", str, "TEXT", "string", "exif, or file when the date is the file's time"),
    Attribute("camera", str, "TEXT", "string", "camera make and model"),
    Attribute("lens", str, "TEXT", "string", "lens model"),
    Attribute("lat", float, "REAL", "double", "GPS latitude, decimal degrees"),
    Attribute("lon", float, "REAL", "double", "GPS longitude, decimal degrees"),
)
NAMES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES)
BY_NAME = {a.name: a for a in ATTRIBUTES}
NUMERIC = frozenset(a.name for a in ATTRIBUTES if a.numeric)
#: Added by format version 3 of the collection (the store's migration adds these columns).
PHOTO_ATTRIBUTES = ("taken", "taken_tz", "taken_source", "camera", "lens", "lat", "lon")


@dataclass(frozen=True)
class ModelNames:
    """The names one model's vectors go by, from its slug — the convention of Vespa's text-image sample app, one
    per model: the document's vector field ``<slug>_image``, the query tensor ``<slug>_text``, the rank profile
    ``<slug>_similarity``, and the query profile and embedder id ``<slug>``."""

    slug: str

    @property
    def image_field(self) -> str:
        return f"{self.slug}_image"

    @property
    def text_tensor(self) -> str:
        return f"{self.slug}_text"

    @property
    def rank_profile(self) -> str:
        return f"{self.slug}_similarity"

    @classmethod
    def for_field(cls, name: str) -> ModelNames:
        """The names that go with vector field ``name``: its slug is the name less ``_image`` (a field named
        otherwise, through the Python API, is its own slug)."""
        return cls.of_field(name) or cls(name)

    @classmethod
    def of_field(cls, name: str) -> ModelNames | None:
        """The names of the model whose field is ``name`` (``<slug>_image``); None for another name."""
        return cls(name[: -len("_image")]) if name.endswith("_image") and len(name) > len("_image") else None

    @classmethod
    def of_profile(cls, name: str) -> ModelNames | None:
        """The names of the model whose rank profile is ``name`` (``<slug>_similarity``); None for another."""
        suffix = "_similarity"
        return cls(name[: -len(suffix)]) if name.endswith(suffix) and len(name) > len(suffix) else None
