"""What a photo's EXIF says about it: when it was taken (and in which time zone), with which camera and lens, where.

Rules:

* ``taken`` is seconds since the epoch. With an ``OffsetTimeOriginal`` (EXIF 2.31) it is the true instant and
  ``taken_tz`` holds the offset (``+02:00``). Without one, cameras record the wall clock only: ``taken`` is that
  wall clock read as UTC (so "taken on 2024-06-01" means the date the camera showed) and ``taken_tz`` is absent.
  The first of DateTimeOriginal, DateTimeDigitized and DateTime that parses is used.
* A file without a usable date gets its modification time, and ``taken_source`` says which: ``exif`` or ``file``.
* ``camera`` is make and model in one string, the make not repeated (``Canon EOS R5``, ``Apple iPhone 13``).
* ``lat``/``lon`` are decimal degrees from the GPS block (degrees, minutes, seconds and the N/S, E/W references).
* Nothing here raises: an impossible date (month 13, year 0, "0000:00:00 00:00:00"), a GPS value out of range or
  of the wrong shape is left out, and :attr:`PhotoMeta.problems` says what was left out and why, for the report.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TAGS = ((0x9003, 0x9011, "DateTimeOriginal"), (0x9004, 0x9012, "DateTimeDigitized"), (0x0132, 0x9010, "DateTime"))
_MAKE, _MODEL, _LENS_MODEL, _LENS_MAKE = 0x010F, 0x0110, 0xA434, 0xA433
_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):(\d{2})\s*$")
_EARLIEST, _LATEST = dt.datetime(1826, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)


@dataclass
class PhotoMeta:
    taken: float | None = None
    taken_tz: str | None = None
    camera: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    problems: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _date(text: str | None, offset: str | None, name: str, problems: list[str]) -> tuple[float, str | None] | None:
    if text is None:
        return None
    match = _DATE.match(text)
    if not match:
        problems.append(f"{name} {text[:40]!r} is not a date")
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        wall = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc)
    except ValueError:
        problems.append(f"{name} {text[:40]!r} is not a possible date")
        return None
    tz = None
    if offset and (m := _OFFSET.match(offset)):
        sign = 1 if m.group(1) == "+" else -1
        hours, minutes = int(m.group(2)), int(m.group(3))
        if hours <= 14 and minutes < 60:
            wall -= sign * dt.timedelta(hours=hours, minutes=minutes)
            tz = f"{m.group(1)}{m.group(2)}:{m.group(3)}"
    if not _EARLIEST <= wall < _LATEST:
        problems.append(f"{name} {text[:40]!r} is outside 1826-2199")
        return None
    return wall.timestamp(), tz


def _ratio(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:  # (numerator, denominator)
        return float(value[0]) / float(value[1])
    return float(value)


def _degrees(value: Any, ref: Any, limit: float, negative: str, name: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    try:
        parts = [_ratio(v) for v in value] if isinstance(value, (tuple, list)) else [_ratio(value)]
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"{len(parts)} parts")
        degrees = sum(p / 60 ** i for i, p in enumerate(parts))
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        problems.append(f"GPS {name} {str(value)[:40]!r} is malformed ({exc})")
        return None
    if _text(ref) in (negative, negative.lower()):
        degrees = -degrees
    if not math.isfinite(degrees) or abs(degrees) > limit:
        problems.append(f"GPS {name} {degrees!r} is out of range")
        return None
    return float(round(degrees, 7))


def read(img: Image.Image) -> PhotoMeta:
    """The metadata of an opened image (before any conversion); never raises."""
    meta = PhotoMeta()
    try:
        exif = img.getexif()
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose the photo
        meta.problems.append(f"EXIF unreadable ({type(exc).__name__})")
        return meta
    if not exif:
        return meta
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001
        sub = {}
    for date_tag, offset_tag, name in _DATE_TAGS:
        source = exif if date_tag == 0x0132 else sub
        found = _date(_text(source.get(date_tag)), _text(sub.get(offset_tag)), name, meta.problems)
        if found:
            meta.taken, meta.taken_tz = found
            break
    make, model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    if model and make and model.lower().startswith(make.split()[0].lower()):
        meta.camera = model
    else:
        meta.camera = " ".join(p for p in (make, model) if p) or None
    meta.lens = _text(sub.get(_LENS_MODEL))
    try:
        gps = exif.get_ifd(_GPS_IFD)
    except Exception:  # noqa: BLE001
        gps = {}
    if gps:
        lat = _degrees(gps.get(2), gps.get(1), 90, "S", "latitude", meta.problems)
        lon = _degrees(gps.get(4), gps.get(3), 180, "W", "longitude", meta.problems)
        if lat is not None and lon is not None:
            meta.lat, meta.lon = lat, lon
    return meta
