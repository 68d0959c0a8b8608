"""Child processes that do not outlive their parent."""

from __future__ import annotations

import shutil
from collections.abc import Sequence


def die_with_parent(argv: Sequence[str], signal_name: str) -> list[str]:
    """``argv`` run through util-linux's ``setpriv --pdeathsig``: the kernel sends the
    child ``SIG<signal_name>`` when the thread that started it ends (Linux). Without
    ``setpriv`` the command is returned unchanged."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", signal_name, "--", *argv] if setpriv else list(argv)
