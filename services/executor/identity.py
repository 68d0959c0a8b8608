"""The data directory's identity, reported by ``GetInfo`` as ``data_id``.

``$DARB_DATA_DIR/identity`` holds a random id (uuid4 hex) written the first time the
agent starts on the directory. An agent whose directory was emptied or replaced (a lost
disk, a new machine on the same address) writes a new one, so the control plane sees at
its next probe that the environments bound to the agent are no longer there and
rebuilds them (``services/api/scheduling/rebuilds.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from services.executor.durable import replace_file

IDENTITY_FILE = "identity"


def data_identity(data_dir: Path) -> str:
    """The directory's id; a new one, written durably, when it has none (or an empty
    file) yet."""
    path = data_dir / IDENTITY_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found:
        return found
    new = uuid.uuid4().hex
    replace_file(path, f"{new}\n")
    return new
