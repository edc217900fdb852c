"""Image decoding and CLIP preprocessing in NumPy + Pillow (no torch).

``preprocess`` reproduces open_clip's eval transform for ``resize_mode='shortest'`` exactly: resize the
shorter side to the model's size (bicubic, size rounded down as torchvision does), center crop (offsets
rounded as torchvision does), scale to [0, 1], normalise by mean/std. ``load_image`` decodes a file safely:
EXIF orientation applied, every mode made RGB (transparency composited on white, 16-bit scaled rather than
clipped), a pixel limit checked from the header before any decoding, and optional JPEG draft decoding
(a DCT-domain downscale) for images much larger than the model needs.

Formats beyond Pillow's own: HEIC/HEIF through pillow-heif (registered on first use), AVIF through Pillow itself
(11.3+) or pillow-avif-plugin, and camera RAW files (CR2, NEF, ARW, DNG, …, by extension) through rawpy (LibRaw):
the embedded JPEG preview when it is at least ``RAW_PREVIEW_MIN`` pixels on its shorter side (fast: no
demosaicing), else a half-size decode of the sensor data.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import exif
from .errors import ImageDecodeError, ImageError, ImageTooLargeError
from .exif import PhotoMeta

DEFAULT_MAX_PIXELS = int(os.environ.get("CLIPSEEK_MAX_PIXELS", 150_000_000))
#: Draft-decode a JPEG only down to this multiple of the model's input size; measured in bench/transforms.py.
DRAFT_FACTOR = 2
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

ImageInput = Union[str, "os.PathLike[str]", Image.Image]
RAW_EXTENSIONS = {".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".k25", ".kdc", ".mef",
                  ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf",
                  ".srw", ".x3f"}
RAW_PREVIEW_MIN = 448  # a preview smaller than this (the largest CLIP input, RN50x64) is not used


@dataclass(frozen=True)
class ImageInfo:
    """What the file says before any downscaling: upright size and container format."""

    width: int
    height: int
    format: str | None
    meta: PhotoMeta | None = None  # what the EXIF says (date taken, camera, place), read before decoding


def load_image(
    source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode ``source`` to an upright RGB image, or raise an :class:`ImageError` naming it and why."""
    return open_image(source, max_pixels=max_pixels, draft_size=draft_size)[0]


def open_image(
    source: ImageInput | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
    name: str | None = None,
) -> tuple[Image.Image, ImageInfo]:
    """Like :func:`load_image`, also returning the original size and format; ``source`` may be a file object."""
    if isinstance(source, Image.Image):
        img = to_rgb(_upright(source))
        return img, ImageInfo(img.width, img.height, source.format)
    label = name or (os.fsdecode(source) if isinstance(source, (str, bytes, os.PathLike)) else "<upload>")
    register_optional_formats()
    if os.path.splitext(label)[1].lower() in RAW_EXTENSIONS:
        return _open_raw(source, label, max_pixels)
    try:
        if isinstance(source, (str, bytes, os.PathLike)) and os.path.getsize(source) == 0:
            raise ImageDecodeError(label, "empty file (0 bytes)")
        with Image.open(source) as img:
            if img.size == (0, 0):
                raise ImageDecodeError(label, "empty image")
            _check_pixels(label, img.size, max_pixels)
            width, height = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width
            fmt = img.format
            meta = exif.read(img)
            if draft_size and img.format == "JPEG":
                want = draft_size * DRAFT_FACTOR
                img.draft("RGB", (want, want))
            img.load()
            return to_rgb(_upright(img)), ImageInfo(width, height, fmt, meta)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found (moved or deleted while indexing?)") from None
    except PermissionError:
        raise ImageDecodeError(label, "permission denied: make the file readable or exclude it") from None
    except IsADirectoryError:
        raise ImageDecodeError(label, "is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image format Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(label, _pixels_from_message(str(exc)), max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageDecodeError(label, f"truncated or corrupt image ({exc})") from None


_REGISTERED: set[str] = set()


def register_optional_formats() -> set[str]:
    """Register the decoders installed for HEIC/HEIF and AVIF (once); the extensions they add."""
    if "done" not in _REGISTERED:
        from PIL import features

        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _REGISTERED.update({".heic", ".heif"})
        except ImportError:
            pass
        if features.check("avif"):
            _REGISTERED.add(".avif")
        else:
            try:
                import pillow_avif  # noqa: F401 - registers itself

                _REGISTERED.add(".avif")
            except ImportError:
                pass
        _REGISTERED.add("done")
    return _REGISTERED - {"done"}


def raw_supported() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def _open_raw(source: ImageInput | BinaryIO, label: str, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    """A camera RAW file: its embedded preview, or a half-size decode; errors name the file and why."""
    try:
        import rawpy
    except ImportError:
        raise ImageDecodeError(label, "a camera RAW file: install rawpy to index RAW files (pip install rawpy)") \
            from None
    fmt = os.path.splitext(label)[1].lstrip(".").upper()
    try:
        handle: str | BinaryIO = os.fsdecode(source) if isinstance(source, (str, bytes, os.PathLike)) \
            else source  # type: ignore[assignment]  # (an Image never reaches here: open_image handles it)
        with rawpy.imread(handle) as raw:
            sizes = raw.sizes
            width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
            _check_pixels(label, (width, height), max_pixels)
            img = _raw_preview(raw, sizes.flip)
            if img is None:
                img = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found (moved or deleted while indexing?)") from None
    except rawpy.LibRawFileUnsupportedError:
        raise ImageDecodeError(label, "a RAW format or camera that LibRaw (rawpy) does not support") from None
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageDecodeError(label, f"truncated or corrupt RAW file ({type(exc).__name__}: {exc})") from None
    if min(img.size) == 0:
        raise ImageDecodeError(label, "empty image in RAW file")
    return to_rgb(img), ImageInfo(width, height, fmt)


_FLIP_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _raw_preview(raw: object, flip: int) -> Image.Image | None:
    """The camera's embedded preview, upright, when it is large enough to stand for the photo."""
    import io

    import rawpy

    try:
        thumb = raw.extract_thumb()  # type: ignore[attr-defined]
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    try:
        img: Image.Image
        if thumb.format == rawpy.ThumbFormat.JPEG:
            img = Image.open(io.BytesIO(thumb.data))
            img.load()
            has_orientation = img.getexif().get(0x0112, 1) != 1
            img = _upright(img) if has_orientation else img
        else:
            img, has_orientation = Image.fromarray(thumb.data), False
    except (OSError, ValueError, SyntaxError):
        return None  # a damaged preview: decode the sensor data instead
    if not has_orientation and flip in _FLIP_TRANSPOSE:
        img = img.transpose(_FLIP_TRANSPOSE[flip])
    return img if min(img.size) >= RAW_PREVIEW_MIN else None


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageTooLargeError(name, pixels, max_pixels)


def _pixels_from_message(message: str) -> int:
    digits = [int(tok) for tok in message.replace("(", " ").split() if tok.isdigit()]
    return digits[0] if digits else -1


def _upright(img: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ImageOps.exif_transpose(img) or img
        except Exception:  # a broken EXIF block must not lose the image
            return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: alpha over white, 16/32-bit and float scaled to 8 bits, palette expanded."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Shorter side to ``size``, longer side scaled and truncated (torchvision's rule)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def preprocess(
    img: Image.Image,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
) -> np.ndarray:
    """RGB image → normalised float32 array ``[3, size, size]``, as CLIP's eval transform."""
    width, height = img.size
    new_w, new_h = resized_size(width, height, size)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32)
    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32)
    shift = np.asarray([m / s for m, s in zip(mean, std)], dtype=np.float32)
    return np.ascontiguousarray((arr * scale - shift).transpose(2, 0, 1))


Image.MAX_IMAGE_PIXELS = None  # clipseek checks its own, configurable limit before decoding
