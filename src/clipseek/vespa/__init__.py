"""Scale-out on Vespa: export a collection as an application package, and feed its documents to a Vespa endpoint."""

from __future__ import annotations

from .export import export_package
from .feed import feed_collection

__all__ = ["export_package", "feed_collection"]
