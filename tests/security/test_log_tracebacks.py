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
    configured, config = structlog.is_configured(), structlog.get_config()
    yield
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
