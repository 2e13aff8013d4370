"""The OpenAPI document, completed with what every route shares: the error envelope on each error
answer, the errors every route can give (a bad parameter, a missing token, an unknown id), and the
`Idempotency-Key` header of the writes. FastAPI documents a route's own answers; this adds the rest
once, so the document says what the gateway really answers (DESIGN §4)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

# Routes that take no token.
PUBLIC = {"/health", "/metrics", "/authenticate", "/authenticate/mfa"}
# The tag of the routes that send a write to the portal (routes/writes.py): they take an
# Idempotency-Key, and may find the portal unreachable.
WRITES_TAG = "writes"

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Machine-readable, e.g. `invalid_request`, `not_found`, `insufficient_scope`."
    )
    message: str = Field(description="What went wrong, for a person.")
    param: str | None = Field(None, description="The parameter, field or header at fault, if one is.")
    request_id: str | None = Field(None, description="This request's id (also the `X-Request-Id` header).")


class Error(BaseModel):
    """Every error answer: 4xx for the caller's mistakes, 5xx for the gateway's or the portal's."""

    error: ErrorDetail


IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Makes the write safe to retry (kept 7 days): the same key with the same body replays "
    "the first answer (`Idempotent-Replayed: true`); with another body, 422 `idempotency_key_reused`; "
    "while the first is in progress, 409 `idempotency_key_in_flight`.",
}


def _common_errors(path: str, method: str, operation: dict[str, Any], write: bool) -> dict[str, str]:
    """The error answers a route gives besides its own (`write`: one of the writes): status ->
    description."""
    found = {"400": "`invalid_request` (a parameter, a body or a cursor that is not valid)."}
    if path not in PUBLIC:
        found["401"] = "`missing_token` or `invalid_token`."
        found["403"] = "`insufficient_scope`: the token lacks the scope this route needs."
    if "{" in path:
        found["404"] = "`not_found`: no such object for this token (another tenant's does not exist)."
    elif write:
        found["404"] = (
            "`not_found`: an object the body names (a bill, vendor, customer) does not exist for this token."
        )
    if method in ("post", "patch", "put") and operation.get("requestBody"):
        found["413"] = "`payload_too_large`: the body is over the gateway's limit."
    if write:
        found["503"] = (
            "The portal could not be reached, or answered with a failure; the write may be retried."
        )
    return found


def _add_model(components: dict[str, Any], model: type[BaseModel]) -> None:
    found = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in found.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault(model.__name__, found)


def _complete(schema: dict[str, Any], models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    every: tuple[type[BaseModel], ...] = (Error, *models)
    for model in every:
        _add_model(components, model)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            default_422 = responses.get("422", {}).get("description") == "Validation Error"
            if default_422:  # FastAPI's own: the gateway answers a body it cannot read with 400
                del responses["422"]
            write = WRITES_TAG in operation.get("tags", ())
            for status, description in _common_errors(path, method, operation, write).items():
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {"application/json": {"schema": _ERROR_REF}}
            if write:
                parameters = operation.setdefault("parameters", [])
                if not any(p.get("name") == "Idempotency-Key" for p in parameters):
                    parameters.append(IDEMPOTENCY_HEADER)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install_openapi(app: FastAPI, *models: type[BaseModel]) -> None:
    """Serve the completed document at the app's OpenAPI URL (built once, on first request).
    `models`: schemas that routes refer to by hand (a body a route reads itself)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete(
                get_openapi(
                    title=app.title, version=app.version, description=app.description, routes=app.routes
                ),
                models,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
