"""What every request handler needs, built once at start."""

from __future__ import annotations

from dataclasses import dataclass

from darb.v1 import environments_pb2
from services.api.auth.tokens import TokenCache
from services.api.caches import NotifiedCache
from services.api.database.db import Database
from services.api.events import EventBus
from services.api.metrics import JobObserver
from shared.config import ApiSettings

# GetEnvironment's answers by environment id, with the owner's id.
EnvironmentCache = NotifiedCache[str, tuple[str, environments_pb2.GetEnvironmentResponse]]


@dataclass(frozen=True)
class AppState:
    settings: ApiSettings
    db: Database
    bus: EventBus
    tokens: TokenCache
    environments: EnvironmentCache
    # Counts and logs the jobs a request ends (CancelJob of a pending job).
    jobs: JobObserver
