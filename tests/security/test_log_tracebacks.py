"""An error logged with its traceback shows where it happened, never the values the frames held."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from plooto_api.log import configure_logging, get_logger

SECRET = "papi_LocalVariableThatMustNotBeLogged"


def _fail(authorization: str) -> None:
    raise RuntimeError("no running event loop")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    import logging

    configured, config = structlog.is_configured(), structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_are_logged_without_local_variables(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", fmt)
    try:
        headers = {"authorization": f"Bearer {SECRET}"}
        _fail(headers["authorization"])
    except RuntimeError as exc:
        get_logger(__name__).error("unhandled_error", path="/x", exc_info=exc)
    err = capsys.readouterr().err
    assert "no running event loop" in err and "_fail" in err  # the traceback itself is there
    assert SECRET not in err
    if fmt == "json":
        assert "Traceback" in json.loads(err.strip().splitlines()[-1])["exception"]


def test_json_logs_are_json_on_every_line_the_standard_librarys_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # uvicorn's lines (and other libraries') were plain text among the JSON, and skipped redaction.
    import logging

    configure_logging("info", "json")
    configure_logging("info", "json")  # the CLI configures, then `serve` again: still one line each
    get_logger(__name__).info("ours", password=SECRET)
    # (A logger of its own: other tests running uvicorn in this process set uvicorn's loggers' levels.)
    logging.getLogger("a.server").info("Started server process [%d]", 4242)
    logging.getLogger("some.library").warning("careful", extra={"token": SECRET})
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [line["event"] for line in lines] == ["ours", "Started server process [4242]", "careful"]
    assert lines[1]["logger"] == "a.server" and lines[1]["level"] == "info" and "timestamp" in lines[1]
    assert SECRET not in json.dumps(lines)
