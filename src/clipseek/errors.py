"""The errors clipseek raises. Every message says what to do next.

Tree::

    ClipseekError
    ├── ModelError
    │   ├── UnknownModelError          name not in the registry
    │   ├── ModelNotAvailableError     not cached and cannot be fetched
    │   └── ExportDependencyError      torch/open_clip missing for an export
    ├── ImageError                     one input image could not be used
    │   ├── ImageDecodeError           not an image, truncated, empty, unreadable
    │   └── ImageTooLargeError         over the decompression-bomb pixel limit
    ├── CollectionError                the collection on disk
    │   ├── NotACollectionError        folder missing or not a collection
    │   ├── CollectionVersionError     written by a newer clipseek
    │   ├── CollectionLockedError      another process is writing
    │   ├── CollectionDamagedError     a file of it fails its checks (`clipseek check --repair`)
    │   ├── DiskFullError              the disk filled during a write; nothing committed was lost
    │   └── ReadOnlyError              opened read-only / folder not writable
    ├── QueryError                     a request the engine cannot run
    │   ├── YqlSyntaxError             malformed YQL, with the position
    │   ├── IllegalQueryError          a request Vespa refuses as an illegal query (no query at all)
    │   ├── FieldError                 unknown field or rank profile
    │   ├── VectorError                wrong dimension, NaN/inf, not numbers
    │   └── TooLargeError              a request body or decompressed body over its limit (HTTP 413)
    └── VespaError                     moving a collection to Vespa
        ├── VespaExportError           the application package cannot be written
        └── VespaDeployError           no Docker engine / Vespa Cloud credentials, or the deploy failed
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


class CollectionError(ClipseekError):
    pass


class NotACollectionError(CollectionError):
    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"{path} is not a clipseek collection ({reason}): create one with "
                         "`clipseek index PHOTOS --collection DIR`, or pass the right --collection")


class CollectionVersionError(CollectionError):
    def __init__(self, path: Path, found: int, supported: int) -> None:
        self.found, self.supported = found, supported
        super().__init__(f"{path} has format version {found}, newer than this clipseek understands ({supported}): "
                         "upgrade clipseek (pip install -U clipseek)")


class CollectionLockedError(CollectionError):
    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        super().__init__(f"{path} is being written by another process ({holder}): wait for it to finish, "
                         "or open the collection read-only")


class ReadOnlyError(CollectionError):
    pass


class CollectionDamagedError(CollectionError):
    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path, self.problems = path, list(problems)
        more = len(self.problems) - 5
        listed = "; ".join(self.problems[:5]) + (f"; and {more} more" if more > 0 else "")
        super().__init__(f"collection {path} is damaged: {listed}. Run `clipseek check --repair --collection {path}` "
                         "to rebuild what is derived and list what must be re-indexed")


class DiskFullError(CollectionError):
    def __init__(self, path: Path, written: int) -> None:
        self.path, self.written = path, written
        super().__init__(f"disk full while writing {path}: {written} documents written, nothing lost; "
                         "free space and re-run")


class QueryError(ClipseekError):
    pass


class YqlSyntaxError(QueryError):
    def __init__(self, yql: str, position: int, message: str) -> None:
        self.yql, self.position = yql, position
        pointer = yql[max(0, position - 20): position + 20]
        super().__init__(f"Could not parse YQL at column {position + 1}: {message} (near {pointer!r})")


class IllegalQueryError(QueryError):
    pass


class FieldError(QueryError):
    pass


class NoVectorsError(FieldError):
    """The collection holds no vectors to search for the model asked for (or none at all)."""


class VectorError(QueryError):
    pass


class TooLargeError(QueryError):
    pass


class VespaError(ClipseekError):
    pass


class VespaExportError(VespaError):
    pass


class VespaDeployError(VespaError):
    pass
