"""What every request handler needs, built once at start."""

from __future__ import annotations

from dataclasses import dataclass

from services.api.db import Database
from services.api.events import EventBus
from services.api.tokens import TokenCache
from shared.config import ApiSettings


@dataclass(frozen=True)
class AppState:
    settings: ApiSettings
    db: Database
    bus: EventBus
    tokens: TokenCache
