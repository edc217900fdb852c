"""Scale-out on Vespa: export a collection as an application package, deploy it, feed its documents to it."""

from __future__ import annotations

from .deploy import deploy_package
from .export import export_package
from .feed import feed_collection, feed_shards

__all__ = ["deploy_package", "export_package", "feed_collection", "feed_shards"]
