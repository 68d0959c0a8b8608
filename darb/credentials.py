"""The CLI's saved logins: one token per server address, in a file only the user can read.

The file is ``$XDG_CONFIG_HOME/darb/credentials.json`` (``~/.config/darb/...`` by
default), mode 0600 in a 0700 directory, and is replaced atomically so a crash never
leaves half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Login:
    username: str
    token: str


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "darb"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _read() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(credentials_path().read_text())
    except (FileNotFoundError, ValueError):
        # A damaged file holds no usable token: the next login rewrites it.
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, dict[str, str]]) -> None:
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=2)
    os.replace(tmp, path)


def load(address: str) -> Login | None:
    entry = _read().get(address)
    if not entry:
        return None
    return Login(username=entry.get("username", ""), token=entry.get("token", ""))


def save(address: str, login: Login) -> Path:
    data = _read()
    data[address] = asdict(login)
    _write(data)
    return credentials_path()


def delete(address: str) -> bool:
    """Forgets the login for ``address``; False if there was none."""
    data = _read()
    if data.pop(address, None) is None:
        return False
    _write(data)
    return True
