"""``clipseek serve``: Vespa's query and document APIs over a collection (HTTP adapters only).

Routes: ``/search/`` (GET, POST), ``/document/v1/<ns>/image_search/docid/<id>`` (GET, POST, PUT, DELETE) and
visiting ``/document/v1/<ns>/image_search/docid/``, ``/ApplicationStatus`` and ``/status.html`` (what pyvespa and
the ``vespa`` CLI probe). Responses and errors use Vespa's JSON shapes and status codes.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
