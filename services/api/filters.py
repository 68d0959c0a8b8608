"""ListEnvironments' ``filter``: the part of AIP-160 it needs, parsed without SQL.

A filter is restrictions joined by ``AND``, each ``field = value`` or ``field != value``.
Values are bare words or double-quoted strings (``\\"`` and ``\\\\`` escape). In a value of
``name``, ``*`` is a wildcard that matches any characters or none (names cannot hold a
``*``): ``name = "web*"``, ``name = "*web*"``. Errors name the position (1-based
character) where the filter went wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.api.repo.models import EnvironmentStatus, Role
from shared.errors import InvalidArgument

MAX_FILTER_LENGTH = 1024
FIELDS = ("name", "owner", "status", "role", "shared")
BOOLEANS = ("TRUE", "FALSE")
# ``owner = me``: the caller.
ME = "me"
# In a value of ``name``: any characters, or none.
WILDCARD = "*"

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>!=|=)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<word>[A-Za-z0-9_.*\-]+)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Restriction:
    field: str
    negated: bool
    value: str  # a status or role name, or TRUE or FALSE, for those fields: upper case


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "string", "word"
    text: str
    position: int  # 1-based


def _error(position: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {message} at position {position}")


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:  # only trailing spaces are left
            break
        kind = match.lastgroup or "bad"
        start = match.start(kind) + 1
        if kind == "bad":
            bad = match.group(kind)
            raise _error(start, "unterminated string" if bad == '"' else f"unexpected {bad!r}")
        value = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append(_Token(kind, value, start))
        at = match.end()
    return tokens


def _value(field: str, token: _Token) -> str:
    if field != "name" and WILDCARD in token.text:
        raise _error(token.position, f"{WILDCARD} is a wildcard only in a value of name")
    if field == "status":
        value = token.text.upper()
        if value not in EnvironmentStatus.__members__:
            raise _error(token.position, f"status must be one of {', '.join(EnvironmentStatus)}")
        return value
    if field == "role":
        value = token.text.upper()
        if value not in Role.__members__:
            raise _error(token.position, f"role must be one of {', '.join(Role.__members__)}")
        return value
    if field == "shared":
        value = token.text.upper()
        if value not in BOOLEANS:
            raise _error(token.position, "shared must be true or false")
        return value
    return token.text


def _restriction(tokens: list[_Token], at: int) -> Restriction:
    field, op, value = tokens[at], tokens[at + 1], tokens[at + 2]
    if field.kind != "word" or field.text not in FIELDS:
        raise _error(
            field.position, f"unknown field {field.text!r}; use one of {', '.join(FIELDS)}"
        )
    if op.kind != "op":
        raise _error(op.position, "expected = or !=")
    if value.kind == "op" or (value.kind == "word" and value.text.upper() == "AND"):
        raise _error(value.position, "expected a value")
    return Restriction(field.text, op.text == "!=", _value(field.text, value))


def parse(text: str) -> list[Restriction]:
    """The restrictions of ``text``; InvalidArgument with the position for a bad one."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidArgument(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    restrictions: list[Restriction] = []
    at = 0
    while at < len(tokens):
        if at + 3 > len(tokens):
            raise _error(len(text.rstrip()) + 1, "expected `field = value`")
        restrictions.append(_restriction(tokens, at))
        at += 3
        if at < len(tokens):
            joiner = tokens[at]
            if joiner.kind != "word" or joiner.text != "AND":
                raise _error(joiner.position, "expected AND (the only operator supported)")
            at += 1
            if at == len(tokens):
                raise _error(len(text.rstrip()) + 1, "expected a restriction after AND")
    return restrictions
