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

from plooto_sandbox.store import PortalState

FORMAT_VERSION = 1
log = logging.getLogger("plooto_sandbox")


def save_state(path: Path, state: PortalState) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=".plooto-sandbox-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            pickle.dump((FORMAT_VERSION, state), stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> PortalState | None:
    """The saved state, or None (with a warning) if the file is missing, corrupt or too old."""
    if not path.exists():
        return None
    try:
        with path.open("rb") as stream:
            version, state = pickle.load(stream)
    except Exception as exc:  # any unpickling failure means "start fresh"
        log.warning("ignoring unreadable sandbox state file %s: %s", path, type(exc).__name__)
        return None
    if version != FORMAT_VERSION or not isinstance(state, PortalState):
        log.warning("ignoring sandbox state file %s: incompatible format", path)
        return None
    return state
