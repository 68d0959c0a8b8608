"""AdminService (admins only): one class made of the RPCs of the modules that own them,
registered once in ``app.py``."""

from __future__ import annotations

from darb.v1 import admin_pb2_grpc as pb_grpc
from services.api.handlers.admin_usage import UsageRpcs
from services.api.handlers.drains import DrainRpcs
from services.api.state import AppState


class AdminService(DrainRpcs, UsageRpcs, pb_grpc.AdminServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state
