"""Fixtures for webhook tests: a receiver on loopback and an injectable clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from plooto_api.store.base import utcnow

from .receiver import Receiver


class Clock:
    """A clock the test moves by hand. It starts an hour ahead of real time, so every delivery the
    test's events create (due at their real creation time) is already due by it."""

    def __init__(self) -> None:
        self.current = utcnow() + timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()
