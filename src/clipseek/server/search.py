"""Vespa's search API, ``/search/``: query parameters (or a JSON body of them) in, Vespa's result JSON out.

What a request means is :mod:`clipseek.query`'s business (query profiles, rank profiles, ``input=`` embedded
with the rank profile's model); this module parses the HTTP request and renders the answer, errors included,
as Vespa's search handler does.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from .. import query as q
from ..collection import Collection, SearchResult
from ..errors import ClipseekError, IllegalQueryError, QueryError, TooLargeError, YqlSyntaxError
from .bodies import is_json, loads_json, read_body
from .rendering import JSON, search_error, search_result
from .state import encoder_for, read


async def search(request: Request) -> Response:
    started = time.perf_counter()
    try:
        params: dict[str, str] = {}
        if request.method == "POST" and is_json(request):  # as Vespa: other bodies are not read
            body = await read_body(request)
            if body.strip():
                doc = loads_json(body)
                if not isinstance(doc, dict):
                    raise QueryError("the JSON body must be an object of query parameters")
                params.update(q.flatten_body(doc))
        params.update(request.query_params)
        req = q.SearchRequest.from_params(params)
        encoders = encoder_for(request)

        def run(coll: Collection) -> tuple[SearchResult, str]:
            return q.run(coll, req, encoders), coll.namespace
        result, namespace = await read(request, run)
    except TooLargeError as exc:
        return search_error(4, str(exc), 413)
    except (YqlSyntaxError, IllegalQueryError) as exc:
        return search_error(3, str(exc), 400)
    except ClipseekError as exc:
        return search_error(4, str(exc), 400)
    return JSON(search_result(result, namespace, time.perf_counter() - started if req.timing else None))
