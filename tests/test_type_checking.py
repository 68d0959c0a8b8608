"""``make lint`` runs mypy with the project's settings (pyproject.toml): it must catch a
wrong argument type at a call site into the project's code."""

from __future__ import annotations

from pathlib import Path

from mypy import api

from testkit.processes import PROJECT_ROOT


def test_mypy_catches_a_wrong_argument_type_at_a_call_site(tmp_path: Path) -> None:
    caller = tmp_path / "caller.py"
    caller.write_text(
        "from shared.validation import validate_environment_name\n"
        "from services.api.repo.jobs import request_cancel\n"
        "validate_environment_name(42)\n"
        "request_cancel('not a job')\n"
    )
    config = str(PROJECT_ROOT / "pyproject.toml")
    cache = str(tmp_path / "cache")
    out, _, status = api.run(
        ["--config-file", config, "--cache-dir", cache, "--follow-imports=silent", str(caller)]
    )
    assert status == 1, out
    assert 'Argument 1 to "validate_environment_name" has incompatible type "int"' in out
    assert 'Argument 1 to "request_cancel" has incompatible type "str"' in out
