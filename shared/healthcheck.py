"""``python -m shared.healthcheck ADDR``: exit 0 when a darb service reports SERVING.

Container health checks use it; it asks the standard grpc.health.v1 service, which both
darb services answer without a token.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(address: str, timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # types-grpcio-health-checking leaves the stub's methods out.
            response = stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m shared.healthcheck HOST:PORT")
    sys.exit(0 if is_serving(sys.argv[1]) else 1)
