"""Structured logging (structlog) with secrets redacted before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values are never logged, whatever the caller passes.
_SECRET_KEY = re.compile(
    r"pass(word|phrase)?|secret|totp|token|cookie|authorization|api[_-]?key|otp|mfa_code|code$|"
    r"account_number|session",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
# What PLOOTO_API_LOG_LEVEL and PLOOTO_API_LOG_FORMAT take (as config.Settings declares them).
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: replace the value of any secret-looking key, at any depth."""
    return _redact(event_dict)


def _redact(value: Any) -> Any:
    if isinstance(value, MutableMapping):
        for key in list(value):
            if key != "event" and isinstance(key, str) and _SECRET_KEY.search(key):
                value[key] = REDACTED
            else:
                value[key] = _redact(value[key])
        return value
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # sys.stderr as it is when a line is logged: test runners and embedding applications replace it.
    return structlog.PrintLogger(sys.stderr)


class _StandardLibraryHandler(logging.StreamHandler):
    """The standard library's records (uvicorn's, other libraries') rendered as ours are, in the
    same format and redacted, to sys.stderr as it is when the line is written."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog and the standard library's logging to one stream (stderr), in one format:
    with `json`, every line is one JSON object, uvicorn's and other libraries' lines included."""
    # Tracebacks are plain: structlog's default (rich, and its dict form for JSON) prints every
    # frame's local variables, and those hold request headers, tokens and decrypted credentials.
    renderers: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            redact_secrets,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    handler = _StandardLibraryHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                stamp,
                redact_secrets,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StandardLibraryHandler)]:
        root.removeHandler(old)  # configured again (the CLI, then `serve`): one handler, the newest
    root.addHandler(handler)
    root.setLevel(level.upper())
    # One line per portal request is noise at info level (and URLs are not for every log).
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def get_logger(name: str) -> Any:
    """A bound structlog logger for a module."""
    return structlog.get_logger(name)
