"""PortalError: a failure the portal reports in its JSON error envelope."""

from __future__ import annotations


class PortalError(Exception):
    """An HTTP error with the portal's `errorCode` and optional per-field validation messages."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        validation_errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.validation_errors = validation_errors or []


def invalid_field(field: str, message: str) -> PortalError:
    """400 ValidationFailed about one field of the request."""
    return PortalError(400, "ValidationFailed", message, [{"field": field, "message": message}])


def not_found(what: str) -> PortalError:
    """404 NotFound for a missing (or foreign) object."""
    return PortalError(404, "NotFound", f"{what} was not found.")


def invalid_state(message: str) -> PortalError:
    """409 InvalidState: not allowed in the current status."""
    return PortalError(409, "InvalidState", message)


def rule(code: str, message: str, field: str | None = None) -> PortalError:
    """A 422 business-rule violation."""
    errors = [{"field": field, "message": message}] if field else []
    return PortalError(422, code, message, errors)
