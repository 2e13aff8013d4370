"""The error envelope: `{"error": {"code", "message", "param", "request_id"}}` for every failure.

Caller mistakes are 4xx with a machine-readable code; an unexpected failure is a 500 that says
nothing about internals (the details go to the log, with the request id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from plooto_api.log import get_logger
from plooto_api.services.connections import ConnectionNotFound
from plooto_api.store.pagination import InvalidCursor

log = get_logger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
}


class ApiError(Exception):
    """An error the caller should see, with its HTTP status and machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers


def error_body(request: Request, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {
        "error": {
            "code": code,
            "message": message,
            "param": param,
            "request_id": getattr(request.state, "request_id", None),
        }
    }


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(request, exc.code, exc.message, exc.param), status_code=exc.status, headers=exc.headers
    )


# FastAPI's words for a JSON body json.loads gave up on without a JSONDecodeError (not UTF-8 text,
# nested too deeply): as much the caller's malformed JSON as a syntax error is.
_BODY_NOT_PARSED = "There was an error parsing the body"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _BODY_NOT_PARSED:
        message = not_json_message("the body", "it could not be read (not UTF-8 text, or nested too deeply)")
        return await _api_error(request, ApiError(400, "invalid_request", message))
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return JSONResponse(
        error_body(request, code, message), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


_SOURCES = ("body", "query", "path", "header", "cookie")  # where FastAPI found what it validated
# pydantic's "not an object" errors name our model classes ("… instance of CreateBill").
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def not_json_message(what: str, reason: str, position: int | None = None) -> str:
    """Why `what` ("the body", "the bill part") is not JSON, for a caller to fix it."""
    where = f" (at character {position})" if position is not None else ""
    return f"{what} is not valid JSON: {reason}{where}"


def invalid_request(errors: Sequence[Any], *, what: str = "the body", param: str | None = None) -> ApiError:
    """The first of pydantic's `errors` about `what` as a 400 invalid_request naming the field at
    fault (dotted, list items by index: `lines.0.amount`); `param` names `what` itself, if anything."""
    first: Mapping[str, Any] = errors[0] if errors else {}
    location = list(first.get("loc", ()))
    if location and location[0] in _SOURCES:
        location = location[1:]
    kind = first.get("type")
    if kind == "json_invalid":  # FastAPI's location holds the character offset, not a field
        reason = (first.get("ctx") or {}).get("error", "malformed")
        offset = location[0] if location and isinstance(location[0], int) else None
        return ApiError(400, "invalid_request", not_json_message(what, reason, offset), param=param)
    field = ".".join(str(part) for part in location)
    if kind in _NOT_AN_OBJECT:
        if field:
            message = f"{field}: must be a JSON object"
        elif isinstance(first.get("input"), bytes):  # FastAPI hands over the raw body when it is not JSON
            message = f"{what} must be a JSON object sent with `Content-Type: application/json`"
        else:
            message = f"{what} must be a JSON object"
    elif kind == "missing" and not field:
        message = f"{what} is empty; send a JSON object"
    else:
        message = str(first.get("msg", "invalid request"))
        if field:
            message = f"{field}: {message}"
    return ApiError(400, "invalid_request", message, param=field or param)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _api_error(request, invalid_request(exc.errors()))


async def _invalid_cursor(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body(request, "invalid_cursor", str(exc), "cursor"), status_code=400)


async def _connection_gone(request: Request, exc: Exception) -> JSONResponse:
    # A connection removed while a request about it was under way (one of its own, or a sign-in's).
    message = f"no connection {str(exc)[:64]}; it may have been removed"
    return JSONResponse(error_body(request, "not_found", message), status_code=404)


# What PostgreSQL says of a NUL character in text or JSON (SQLite stores one): the caller's input.
_NUL_REFUSALS = ("cannot contain NUL", "\\u0000 cannot be converted", "unsupported Unicode escape sequence")


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the database refuses to store. A NUL character in a body's text (the parameters are
    checked up front) is the caller's; the transaction was rolled back, so nothing was written."""
    if any(refusal in str(getattr(exc, "orig", exc)) for refusal in _NUL_REFUSALS):
        message = "text values must not contain NUL characters (\\u0000)"
        return JSONResponse(error_body(request, "invalid_request", message), status_code=400)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", error_type=type(exc).__name__, path=request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(request, "internal_error", "the gateway hit an unexpected error; see its log"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every kind of failure through the one envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidCursor, _invalid_cursor)
    app.add_exception_handler(ConnectionNotFound, _connection_gone)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected_error)
