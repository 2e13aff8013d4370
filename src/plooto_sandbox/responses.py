"""HTTP responses in the portal's own dialect: float-free JSON and the `errorCode` envelope."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from plooto_sandbox.errors import PortalError
from plooto_sandbox.money import encode_portal_json


class PortalJSONResponse(Response):
    """JSON whose Decimals are written as exact number literals."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        """Encode with Decimal-exact numbers."""
        return encode_portal_json(content)


def envelope(
    code: str, message: str, trace_id: str, validation_errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The portal's error body."""
    return {
        "errorCode": code,
        "message": message,
        "validationErrors": validation_errors or [],
        "traceId": trace_id,
    }


def error_response(
    error: PortalError, trace_id: str, headers: dict[str, str] | None = None
) -> PortalJSONResponse:
    """A PortalError as a JSON response."""
    return PortalJSONResponse(
        envelope(error.code, error.message, trace_id, error.validation_errors),
        status_code=error.status,
        headers=headers,
    )
