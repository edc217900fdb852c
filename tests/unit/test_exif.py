"""EXIF as attributes: date taken (with its time zone), camera, lens, place; filters and date order everywhere."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from clipseek import exif, load_model
from clipseek.cli import main
from clipseek.collection import Collection
from clipseek.indexer import Indexer
from clipseek.server import create_app

from ..imagegen import scene_image

PARIS = (48.8582, 2.2945)


def utc(*args):
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


def dms(degrees):
    d = int(degrees)
    m = int((degrees - d) * 60)
    return (float(d), float(m), round((degrees - d - m / 60) * 3600, 4))


def photo(path, i, *, make=None, model=None, lens=None, taken=None, offset=None, digitized=None, gps=None,
          raw_gps=None, mtime=None):
    """A JPEG with the EXIF a camera writes (Pillow's own EXIF writer)."""
    tags = Image.Exif()
    if make:
        tags[0x010F] = make
    if model:
        tags[0x0110] = model
    sub = tags.get_ifd(0x8769)
    if taken:
        sub[0x9003] = taken
    if offset:
        sub[0x9011] = offset
    if digitized:
        sub[0x9004] = digitized
    if lens:
        sub[0xA434] = lens
    if gps or raw_gps:
        g = tags.get_ifd(0x8825)
        if gps:
            lat, lon = gps
            g[1], g[2] = ("N" if lat >= 0 else "S"), dms(abs(lat))
            g[3], g[4] = ("E" if lon >= 0 else "W"), dms(abs(lon))
        else:
            g.update(raw_gps)
    scene_image(i).resize((200, 150)).save(path, exif=tags.tobytes(), quality=90)
    if mtime:
        os.utime(path, (mtime, mtime))
    return path


def test_reading_dates_zones_cameras_and_places(tmp_path):
    p = photo(tmp_path / "a.jpg", 1, make="Apple", model="iPhone 13", lens="iPhone 13 back camera 5.1mm",
              taken="2023:07:14 18:30:05", offset="+02:00", gps=PARIS)
    meta = exif.read(Image.open(p))
    assert meta.taken == utc(2023, 7, 14, 16, 30, 5) and meta.taken_tz == "+02:00"
    assert meta.camera == "Apple iPhone 13" and meta.lens.startswith("iPhone 13 back")
    assert meta.lat == pytest.approx(PARIS[0], abs=1e-4) and meta.lon == pytest.approx(PARIS[1], abs=1e-4)
    assert meta.problems == []

    p = photo(tmp_path / "b.jpg", 2, make="Canon", model="Canon EOS R5", taken="2021:01:01 09:00:00",
              gps=(-33.8568, -151.2153))
    meta = exif.read(Image.open(p))
    assert meta.taken == utc(2021, 1, 1, 9) and meta.taken_tz is None  # the camera's wall clock, read as UTC
    assert meta.camera == "Canon EOS R5" and meta.lat < 0 and meta.lon < 0


@pytest.mark.parametrize("taken, why", [("2023:13:45 25:61:00", "not a possible date"),
                                        ("0000:00:00 00:00:00", "not a possible date"),
                                        ("yesterday", "not a date"), ("1700:01:01 00:00:00", "outside")])
def test_an_impossible_date_is_left_out_and_said(tmp_path, taken, why):
    p = photo(tmp_path / "x.jpg", 3, taken=taken, digitized="2022:02:02 02:02:02")
    meta = exif.read(Image.open(p))
    assert meta.taken == utc(2022, 2, 2, 2, 2, 2)  # the next date tag that parses
    assert any(why in problem for problem in meta.problems), meta.problems


@pytest.mark.parametrize("raw_gps, why", [
    ({1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (2.0, 0.0, 0.0)}, "out of range"),
    ({1: "N", 2: (48.0, 51.0, 29.0, 7.0), 3: "E", 4: (2.0, 0.0, 0.0)}, "malformed"),
])
def test_malformed_gps_is_left_out_and_said(tmp_path, raw_gps, why):
    p = photo(tmp_path / "g.jpg", 4, taken="2022:02:02 02:02:02", raw_gps=raw_gps)
    meta = exif.read(Image.open(p))
    assert meta.lat is None and meta.lon is None and meta.taken is not None
    assert any(why in problem for problem in meta.problems), meta.problems


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("exif")
    folder = base / "photos"
    folder.mkdir()
    photo(folder / "paris.jpg", 1, make="Apple", model="iPhone 13", taken="2023:07:14 18:30:05", offset="+02:00",
          gps=PARIS)
    photo(folder / "newyear.jpg", 2, make="Canon", model="Canon EOS R5", lens="RF24-105mm F4 L IS USM",
          taken="2021:01:01 09:00:00")
    photo(folder / "scan.jpg", 3, mtime=utc(2020, 5, 5, 12))  # no EXIF: the file's time, marked as such
    photo(folder / "broken.jpg", 5, make="Apple", model="iPhone 13", taken="2023:13:45 25:61:00",
          raw_gps={1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (2.0, 0.0, 0.0)}, mtime=utc(2019, 3, 3))
    with Collection.create(base / "c") as coll:
        report = Indexer(coll, load_model("tiny")).run([folder])
        docs = {d.image_file_name: d for d in coll.iter_documents(with_vectors=False)}
    return base, folder, report, docs


def test_indexing_stores_the_attributes_and_reports_what_it_left_out(library):
    _base, _folder, report, docs = library
    assert report.indexed == 4 and not report.failed
    assert [os.path.basename(p) for p, _ in report.metadata_skipped] == ["broken.jpg"]
    assert "1 indexed without some EXIF fields" in report.summary()
    paris = docs["paris.jpg"]
    assert (paris.taken, paris.taken_tz, paris.taken_source) == (utc(2023, 7, 14, 16, 30, 5), "+02:00", "exif")
    assert paris.camera == "Apple iPhone 13" and paris.lat == pytest.approx(PARIS[0], abs=1e-4)
    assert docs["newyear.jpg"].lens == "RF24-105mm F4 L IS USM" and docs["newyear.jpg"].lat is None
    scan = docs["scan.jpg"]
    assert (scan.taken, scan.taken_source, scan.camera) == (scan.mtime, "file", None)
    broken = docs["broken.jpg"]
    assert broken.taken_source == "file" and broken.camera == "Apple iPhone 13" and broken.lat is None


def test_cli_filters_and_date_order(library):
    base, _folder, _report, _docs = library
    runner = CliRunner()

    def names(*args):
        out = runner.invoke(main, ["search", "a photo", "--collection", str(base / "c"), "--paths-only", "-k", "10",
                                   *args])
        assert out.exit_code == 0, out.output
        return [os.path.basename(p) for p in out.stdout.splitlines()]

    assert sorted(names("--since", "2021-01-01")) == ["newyear.jpg", "paris.jpg"]
    assert names("--since", "2021-01-01", "--until", "2022-12-31") == ["newyear.jpg"]
    assert set(names("--until", "2021-01-01")) == {"newyear.jpg", "scan.jpg", "broken.jpg"}  # the whole day
    assert sorted(names("--camera", "IPHONE")) == ["broken.jpg", "paris.jpg"]
    assert names("--near", "48.86,2.29,5") == ["paris.jpg"] and names("--near", "48.86,3.5,5") == []
    # 6.25 km away, inside the 5 km bounding box's corner: the distance decides, not the box
    assert names("--near", "48.8982,2.3545,5") == [] and names("--near", "48.8982,2.3545,7") == ["paris.jpg"]
    assert names("--sort", "date") == ["paris.jpg", "newyear.jpg", "scan.jpg", "broken.jpg"]
    bad = runner.invoke(main, ["search", "x", "--collection", str(base / "c"), "--camera", "nikon"])
    assert bad.exit_code == 2 and "Apple iPhone 13" in bad.output and "Canon EOS R5" in bad.output
    bad = runner.invoke(main, ["search", "x", "--collection", str(base / "c"), "--since", "last tuesday"])
    assert bad.exit_code == 2 and "not a date" in bad.output


def test_yql_native_api_and_vespa_schema(library):
    base, _folder, _report, _docs = library
    from clipseek.vespa.export import schema_text

    cutoff = int(utc(2022, 1, 1))
    with Collection.open(base / "c", readonly=True) as coll:
        result = coll.search(yql_query=f'select * from image_search where taken > {cutoff} and '
                                       f'camera contains "apple iphone 13"', hits=10)
        assert [h.fields["image_file_name"] for h in result.hits] == ["paris.jpg"]
        schema = schema_text(coll)
    for line in ("field taken type double", "field camera type string", "field lat type double",
                 "field taken_tz type string"):
        assert line in schema

    app = create_app(base / "c", encoders=lambda _m: load_model("tiny"), default_model="tiny",
                     allow_hosts=["testserver"])
    with TestClient(app) as client:
        info = client.get("/api/info").json()
        assert {c["name"]: c["count"] for c in info["cameras"]} == {"Apple iPhone 13": 2, "Canon EOS R5": 1}

        def names(**params):
            resp = client.get("/api/search", params={"q": "a photo", "k": 10, **params})
            assert resp.status_code == 200, resp.text
            return [h["image_file_name"] for h in resp.json()["hits"]]

        assert names(camera="Canon EOS R5") == ["newyear.jpg"]
        assert names(near="48.86,2.29,5") == ["paris.jpg"]
        assert sorted(names(since=cutoff)) == ["paris.jpg"] and len(names(until=cutoff)) == 3
        assert names(sort="date") == ["paris.jpg", "newyear.jpg", "scan.jpg", "broken.jpg"]
        body = client.post("/api/search", json={"q": "a photo", "camera": ["Canon EOS R5", "Apple iPhone 13"],
                                                "near": [48.86, 2.29, 5]})
        assert [h["image_file_name"] for h in body.json()["hits"]] == ["paris.jpg"]
        for bad in ({"near": "north"}, {"near": "95,0,1"}, {"sort": "size"}):
            resp = client.get("/api/search", params={"q": "x", **bad})
            assert resp.status_code == 400, (bad, resp.text)
