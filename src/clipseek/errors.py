"""The errors clipseek raises. Every message says what to do next.

Tree::

    ClipseekError
    ├── ModelError
    │   ├── UnknownModelError          name not in the registry
    │   ├── ModelNotAvailableError     not cached and cannot be fetched
    │   └── ExportDependencyError      torch/open_clip missing for an export
    └── ImageError                     one input image could not be used
        ├── ImageDecodeError           not an image, truncated, empty, unreadable
        └── ImageTooLargeError         over the decompression-bomb pixel limit
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


class ClipseekError(Exception):
    """Root of every error clipseek raises on purpose."""


class ModelError(ClipseekError):
    pass


class UnknownModelError(ModelError):
    def __init__(self, name: str, valid: Sequence[str]) -> None:
        self.name = name
        self.valid = list(valid)
        super().__init__(
            f"unknown model {name!r}; valid names: {', '.join(self.valid)} "
            "(or 'local-dir:/path/to/exported/model'); run `clipseek models` for details"
        )


class ModelNotAvailableError(ModelError):
    def __init__(self, name: str, cache_dir: Path, reason: str) -> None:
        self.name = name
        self.cache_dir = cache_dir
        self.reason = reason
        super().__init__(
            f"model {name} is not cached in {cache_dir} and could not be fetched ({reason}): "
            f"run `clipseek models fetch {name}` on a machine with network access, then copy "
            f"{cache_dir} here (or point CLIPSEEK_CACHE at a copy)"
        )


class ExportDependencyError(ModelError):
    def __init__(self, name: str, missing: str) -> None:
        self.name = name
        self.missing = missing
        super().__init__(
            f"exporting model {name} to ONNX needs {missing}: "
            "run `pip install 'clipseek[export]'` (searching never needs it)"
        )


class ImageError(ClipseekError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ImageDecodeError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    def __init__(self, path: str, pixels: int, limit: int) -> None:
        self.pixels = pixels
        self.limit = limit
        super().__init__(
            path,
            f"{pixels:,} pixels is over the limit of {limit:,} (a decompression bomb?); "
            "raise it with --max-pixels / CLIPSEEK_MAX_PIXELS if the file is genuine",
        )
