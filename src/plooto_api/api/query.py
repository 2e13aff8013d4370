"""Query parameters a route does not take are a 400, on every route.

A misspelt filter (`/events?created_after=…` for `created_from`) would otherwise be ignored, and the
caller would get the whole list back as if it had been filtered. So would all but the last value of
a parameter given twice that takes one. The object lists refused unknown
parameters through their parameter models; this holds the others (events, connections, audit,
approvals, webhook endpoints, `GET /{resource}/{id}`) to the same rule. What a route takes is read
from the OpenAPI document, which is also what callers read.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from plooto_api.api.errors import ApiError

_ATTRIBUTE = "_plooto_query_parameters"  # kept on the route itself: routes compare by value and do not hash


def _takes_many(parameter: dict[str, Any]) -> bool:
    """Whether an OpenAPI query parameter takes a list (`type=a&type=b`), `| None` included."""
    schema = parameter.get("schema") or {}
    return schema.get("type") == "array" or any(
        option.get("type") == "array" for option in schema.get("anyOf", ()) if isinstance(option, dict)
    )


def _known(request: Request, route: APIRoute) -> tuple[frozenset[str], frozenset[str]] | None:
    """The query parameters `route` documents, and those of them that take several values (None for
    a route the OpenAPI document leaves out)."""
    cached: tuple[tuple[frozenset[str], frozenset[str]] | None] | None = getattr(route, _ATTRIBUTE, None)
    if cached is None:
        operations: dict[str, Any] | None = request.app.openapi()["paths"].get(route.path_format)
        parameters = [] if operations is None else [
            parameter
            for method in route.methods or ()
            for parameter in operations.get(method.lower(), {}).get("parameters", [])
            if parameter.get("in") == "query"
        ]  # fmt: skip
        known = None if operations is None else (
            frozenset(p["name"] for p in parameters), frozenset(p["name"] for p in parameters if _takes_many(p))
        )  # fmt: skip
        cached = (known,)
        setattr(route, _ATTRIBUTE, cached)
    return cached[0]


async def reject_unknown_query(request: Request) -> None:
    """400 `invalid_request` naming the first query parameter the matched route does not take, or
    the first query or path parameter holding a NUL character. (Async:
    a check this small should not cost each request a trip to the thread pool.)"""
    for where, values in (
        ("query", request.query_params.multi_items()),
        ("path", request.path_params.items()),
    ):
        for name, value in values:
            if "\x00" in str(value):  # PostgreSQL stores no NUL in text: a lookup with one was a 500
                raise ApiError(400, "invalid_request", f"{name[:64]}: the {where} parameter contains a NUL character",
                               param=name[:64])  # fmt: skip
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    documented = _known(request, route)
    if documented is None:
        return
    known, many = documented
    for name in request.query_params:
        if name not in known:
            takes = ", ".join(sorted(known)) if known else "none"
            param = name[:64]
            raise ApiError(400, "invalid_request", f"{param}: unknown query parameter (this takes: {takes})",
                           param=param)  # fmt: skip
        if name not in many and len(request.query_params.getlist(name)) > 1:
            # Only the last would count: `status=approved&status=paid` listed the paid bills alone.
            raise ApiError(400, "invalid_request", f"{name}: given more than once (it takes one value)",
                           param=name)  # fmt: skip
