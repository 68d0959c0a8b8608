"""What every request handler needs, built once at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from darb.v1 import environments_pb2
from services.api.auth.tokens import TokenCache
from services.api.caches import NotifiedCache
from services.api.database.db import Database
from services.api.events import EventBus
from services.api.metrics import JobObserver
from services.api.repo.models import Role
from shared.config import ApiSettings


@dataclass
class CachedEnvironment:
    """What GetEnvironment read of one environment: its summary row, the role of each
    caller it was read for, and the answer for each role seen."""

    row: Any
    roles: dict[str, Role] = field(default_factory=dict)
    answers: dict[Role, environments_pb2.GetEnvironmentResponse] = field(default_factory=dict)


# GetEnvironment's answers by environment id.
EnvironmentCache = NotifiedCache[str, CachedEnvironment]


@dataclass(frozen=True)
class AppState:
    settings: ApiSettings
    db: Database
    bus: EventBus
    tokens: TokenCache
    environments: EnvironmentCache
    # Counts and logs the jobs a request ends (CancelJob of a pending job).
    jobs: JobObserver
