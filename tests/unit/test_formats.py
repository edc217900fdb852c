"""HEIC, AVIF and camera RAW files, each made here as a real file, through the indexer."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from clipseek.collection import Collection
from clipseek.indexer import Indexer, docid_for
from clipseek.models import load_model

from ..conftest import need_module
from ..imagegen import scene_image

pillow_heif = need_module("pillow_heif")
rawpy = need_module("rawpy")
pidng_core = need_module("pidng.core")


def write_dng(path, img):
    """A real DNG (a Bayer mosaic of ``img``, uncompressed, no embedded preview) written with PiDNG."""
    from pidng.defs import (
        CalibrationIlluminant,
        CFAPattern,
        DNGVersion,
        Orientation,
        PhotometricInterpretation,
        PreviewColorSpace,
    )

    rgb = np.asarray(img.convert("RGB"), dtype=np.uint16) * 256
    h, w = rgb.shape[:2]
    mosaic = np.empty((h, w), np.uint16)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    tags, Tag = pidng_core.DNGTags(), pidng_core.Tag
    for tag, value in [(Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                       (Tag.Orientation, Orientation.Horizontal),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16), (Tag.CFARepeatPatternDim, [2, 2]),
                       (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0), (Tag.WhiteLevel, 65535),
                       (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
                       (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.Make, "clipseek"),
                       (Tag.Model, "synthetic"), (Tag.DNGVersion, DNGVersion.V1_4),
                       (Tag.DNGBackwardVersion, DNGVersion.V1_2), (Tag.PreviewColorSpace, PreviewColorSpace.sRGB)]:
        tags.set(tag, value)
    writer = pidng_core.RAW2DNG()
    writer.options(tags, path=str(path.parent), compress=False)
    writer.convert(mosaic, filename=path.stem)
    return path


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def index(folder, coll_path, tiny):
    with Collection.open(coll_path, create=True) as coll:
        report = Indexer(coll, tiny).run([folder])
        docs = {d.image_file_name: d for d in coll.iter_documents()}
    return report, docs


def test_heic_and_avif_index_like_the_png_they_were_made_from(tmp_path, tiny):
    folder = tmp_path / "photos"
    folder.mkdir()
    img = scene_image(3).resize((320, 240))
    img.save(folder / "ref.png")
    tags = Image.Exif()  # as a phone writes it: make, model, date taken with its offset
    tags[0x010F], tags[0x0110] = "Apple", "iPhone 15"
    tags.get_ifd(0x8769).update({0x9003: "2024:05:06 07:08:09", 0x9011: "-04:00"})
    pillow_heif.from_pillow(img).save(folder / "phone.heic", quality=95, exif=tags.tobytes())  # not registered
    # here: clipseek registers the decoder itself
    img.save(folder / "web.avif", format="AVIF", quality=95)
    report, docs = index(folder, tmp_path / "c", tiny)
    assert report.indexed == 3 and not report.failed, report.failed
    assert docs["phone.heic"].format == "HEIF" and docs["web.avif"].format == "AVIF"
    assert (docs["phone.heic"].width, docs["phone.heic"].height) == (320, 240)
    phone = docs["phone.heic"]
    assert (phone.camera, phone.taken_tz, phone.taken_source) == ("Apple iPhone 15", "-04:00", "exif")
    assert phone.taken == 1714993689.0  # 2024-05-06 11:08:09 UTC
    ref = docs["ref.png"].vectors["tiny_image"]
    assert cos(docs["phone.heic"].vectors["tiny_image"], ref) > 0.97
    assert cos(docs["web.avif"].vectors["tiny_image"], ref) > 0.97


def test_a_raw_file_is_decoded_and_one_beside_a_jpeg_is_indexed_once(tmp_path, tiny):
    folder = tmp_path / "camera"
    folder.mkdir()
    write_dng(folder / "IMG_0001.dng", scene_image(5).resize((384, 256)))
    write_dng(folder / "IMG_0002.dng", scene_image(6).resize((384, 256)))
    scene_image(6).resize((384, 256)).save(folder / "IMG_0002.JPG", quality=92)  # the camera's JPEG of the same shot
    report, docs = index(folder, tmp_path / "c", tiny)
    assert not report.failed, report.failed
    assert sorted(docs) == ["IMG_0001.dng", "IMG_0002.JPG"]
    raw = docs["IMG_0001.dng"]
    assert (raw.format, raw.width, raw.height) == ("DNG", 384, 256)
    assert np.isfinite(raw.vectors["tiny_image"]).all()
    # a watcher's event for the shadowed RAW does not bring it in either
    with Collection.open(tmp_path / "c") as coll:
        again = Indexer(coll, tiny).update([folder / "IMG_0002.dng"])
        assert again.found == 0 and coll.get(docid_for(os.fsencode(folder / "IMG_0002.dng"))) is None


def test_broken_and_unsupported_raw_files_are_reported_not_fatal(tmp_path, tiny):
    folder = tmp_path / "camera"
    folder.mkdir()
    good = write_dng(folder / "good.dng", scene_image(7).resize((256, 256)))
    (folder / "cut.dng").write_bytes(good.read_bytes()[:4000])  # truncated mid-sensor-data
    (folder / "odd.nef").write_bytes(os.urandom(50_000))  # not any camera's format
    report, docs = index(folder, tmp_path / "c", tiny)
    assert sorted(docs) == ["good.dng"]
    reasons = dict((os.path.basename(p), why) for p, why in report.failed)
    assert set(reasons) == {"cut.dng", "odd.nef"}, reasons
    assert "RAW" in reasons["cut.dng"] and "RAW" in reasons["odd.nef"]
