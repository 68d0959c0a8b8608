"""The SDK stays free of rich: only the CLI's progress bar uses it, from the ``cli`` extra."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from testkit.processes import PROJECT_ROOT


def _names(requirements: list[str]) -> set[str]:
    """The distributions a list of requirements names ("rich>=13.7" -> "rich")."""
    return {
        re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        for requirement in requirements
    }


def test_rich_is_in_the_cli_extra_only() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert "grpcio" in _names(project["dependencies"])  # the names are read right
    assert "rich" not in _names(project["dependencies"])
    assert "rich" in _names(project["optional-dependencies"]["cli"])


def test_importing_the_sdk_loads_no_rich() -> None:
    """In a fresh interpreter, where rich is installed (the ``cli`` extra is in the lock):
    ``import darb, darb.client`` must not load it."""
    code = (
        "import sys, importlib.util\n"
        "import darb, darb.client\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n"
        "print(importlib.util.find_spec('rich') is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    loaded, installed = done.stdout.splitlines()
    assert installed == "True", "rich is missing: the venv is broken"
    assert loaded == "[]", f"import darb, darb.client loaded {loaded}"
