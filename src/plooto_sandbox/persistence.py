"""Optional state file: the whole portal state pickled on shutdown and, debounced, after writes.

Pickle is acceptable here because the file is written and read only by the sandbox itself, on the
operator's own disk; never point `--state-file` at a file from elsewhere.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import BinaryIO

from plooto_sandbox.store import PortalState

FORMAT_VERSION = 2  # 2: customer payments keep an audit trail
# Each state file starts with this line: a file without it is someone else's, never read as a
# state (unpickled) nor overwritten. Files written before it were bare pickles (see _legacy).
MAGIC = b"plooto-sandbox state\n"
log = logging.getLogger("plooto_sandbox")


class StateFileError(Exception):
    """The state file names a file that is not the sandbox's: using it would overwrite it."""


def save_state(path: Path, state: PortalState) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=".plooto-sandbox-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(MAGIC)
            pickle.dump((FORMAT_VERSION, state), stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> PortalState | None:
    """The saved state, or None to start from the seed: no file (or an empty one), or a state file
    of ours that is corrupt or of another version (with a warning). A file that is not the
    sandbox's raises StateFileError: the sandbox would write its state over it."""
    if path.exists() and not path.is_file():
        raise StateFileError(f"{path} is not a file")
    try:
        with path.open("rb") as stream:
            head = stream.read(len(MAGIC))
            if not head:
                return None
            if head != MAGIC:
                stream.seek(0)
                return _legacy(path, stream)
            try:
                version, state = pickle.load(stream)
            except Exception as exc:  # ours, but cut short or from an incompatible version
                log.warning("ignoring unreadable sandbox state file %s: %s", path, type(exc).__name__)
                return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if version != FORMAT_VERSION or not isinstance(state, PortalState):
        log.warning("ignoring sandbox state file %s: incompatible format", path)
        return None
    return state


def _legacy(path: Path, stream: BinaryIO) -> PortalState | None:
    """A state file written before MAGIC: a bare pickle of (FORMAT_VERSION, PortalState)."""
    not_ours = StateFileError(
        f"{path} is not a plooto-sandbox state file; the sandbox would overwrite it: "
        "name another --state-file, or remove this one"
    )
    if stream.read(1) != pickle.PROTO:
        raise not_ours
    stream.seek(0)
    try:
        loaded = pickle.load(stream)
    except Exception:
        raise not_ours from None
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[1], PortalState)):
        raise not_ours
    version, state = loaded
    if version != FORMAT_VERSION:
        log.warning("ignoring sandbox state file %s: incompatible format", path)
        return None
    return state
