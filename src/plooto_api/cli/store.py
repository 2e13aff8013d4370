"""Finding the gateway's store from the command line, and saying in one line why it cannot be used.

Commands that set a store up (`serve`, `connect`, `db upgrade`) call `prepare_store`; every other
command works on an existing store and calls `require_store` first, so that a mistyped data
directory or database URL is refused before anything is created in it. Both turn the errors of
opening a database (a bad URL, a driver that is missing, a server out of reach, a data directory
that is a file) into a `CliError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from plooto_api.config import DATABASE_FILENAME, Settings

_SET_UP = "run `plooto-api serve` or `plooto-api connect` first, or pass --data-dir"


def _cli_error(message: str) -> Exception:
    from plooto_api.cli import CliError

    return CliError(message)


def describe_database(settings: Settings) -> str:
    """The database in force, without any password that may be in its URL."""
    try:
        return make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(settings.resolved_database_url)


def _first_line(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """Turn the errors of opening the configured database into one-line `CliError`s."""
    try:
        yield
    except ArgumentError as exc:  # includes NoSuchModuleError: an unknown dialect or driver
        raise _cli_error(f"database_url {describe_database(settings)}: {_first_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise _cli_error(
            f"cannot open the database {describe_database(settings)}: {_first_line(exc)}"
        ) from exc


def _data_dir_problem(data_dir: Path) -> str | None:
    try:
        if data_dir.exists() and not data_dir.is_dir():
            return f"data directory {data_dir} is not a directory"
    except OSError as exc:
        return f"data directory {data_dir}: {exc.strerror or exc}"
    return None


def prepare_store(settings: Settings) -> None:
    """For the commands that set a store up: create the data directory (SQLite) and check that the
    database can be reached, saying in one line what is wrong if not."""
    problem = _data_dir_problem(settings.data_dir)
    if problem:
        raise _cli_error(problem)
    if settings.database_url is None:
        ensure_data_dir(settings)
        return
    _check_reachable(settings)


def ensure_data_dir(settings: Settings) -> Path:
    """`Settings.ensure_data_dir`, with a directory that cannot be created said in one line."""
    problem = _data_dir_problem(settings.data_dir)
    if problem:
        raise _cli_error(problem)
    try:
        return settings.ensure_data_dir()
    except OSError as exc:
        raise _cli_error(
            f"cannot create the data directory {settings.data_dir}: {exc.strerror or exc}"
        ) from exc


def _check_reachable(settings: Settings) -> str | None:
    """The schema revision of a server database (None if it has no gateway schema), if it answers."""
    from plooto_api.store.database import create_db_engine, current_revision

    with database_errors(settings):
        engine = create_db_engine(settings.resolved_database_url)
        try:
            return current_revision(engine)
        finally:
            engine.dispose()


def _sqlite_revision(path: Path) -> str | None:
    """The migration revision in a SQLite file, opened without creating or changing anything."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True)
    except sqlite3.Error:
        return None
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).fetchone()
        if not has_table:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else None
    except sqlite3.Error:  # not a SQLite file, or one it cannot read
        return None
    finally:
        conn.close()


def require_store(settings: Settings) -> None:
    """Refuse, in one line, a data directory or database with no gateway store in it.

    Checked before anything opens the store, which would otherwise create an empty one."""
    if settings.database_url is None:
        problem = _data_dir_problem(settings.data_dir)
        if problem:
            raise _cli_error(problem)
        path = settings.data_dir / DATABASE_FILENAME
        try:
            found = path.is_file() and _sqlite_revision(path) is not None
        except OSError:  # a directory it may not enter
            found = False
        if not found:
            raise _cli_error(f"no gateway store at {settings.data_dir} ({_SET_UP})")
        return
    if _check_reachable(settings) is None:
        raise _cli_error(
            f"no gateway store in {describe_database(settings)} "
            "(run `plooto-api db upgrade` or `plooto-api serve` with this --database-url first)"
        )
