"""Engines: the seam between an operation and the package manager that carries it out.

``builtin`` (``builtin.py``) runs darb's own py-rattler worker; ``cli`` (``pixi_cli.py``)
drives the ``pixi`` binary. Both run their work as child process groups
(``spawn_in_group``) and report output lines through ``emit``; ``run`` returns an error
message, or None on success (``base.py``).
"""

from __future__ import annotations

import shutil


def available_engines() -> dict[str, str | None]:
    """Engine name -> what it needs on this host (the pixi path), for those available."""
    engines: dict[str, str | None] = {"builtin": None}
    pixi = shutil.which("pixi")
    if pixi:
        engines["cli"] = pixi
    return engines
