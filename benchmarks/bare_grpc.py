"""``python -m benchmarks.bare_grpc``: a gRPC server that answers GetEnvironment
with a fixed message and does nothing else, in one process.

It shows what grpcio's asyncio server costs per call on this machine, with no
authentication, database or conversion, so the GetEnvironment figure can be read
against that ceiling (``make bench`` drives both with the same h2load load).
"""

from __future__ import annotations

import asyncio
import gc

import grpc

from darb.v1 import common_pb2, environments_pb2, environments_pb2_grpc


class FixedAnswer(environments_pb2_grpc.EnvironmentServiceServicer):
    def __init__(self, response: environments_pb2.GetEnvironmentResponse) -> None:
        self._response = response

    async def GetEnvironment(
        self, request: environments_pb2.GetEnvironmentRequest, context: grpc.aio.ServicerContext
    ) -> environments_pb2.GetEnvironmentResponse:
        return self._response


def fixed_response() -> environments_pb2.GetEnvironmentResponse:
    environment = common_pb2.Environment(id="0" * 36, owner_id="1" * 36, name="bare")
    return environments_pb2.GetEnvironmentResponse(environment=environment)


async def serve() -> None:
    server = grpc.aio.server()
    environments_pb2_grpc.add_EnvironmentServiceServicer_to_server(
        FixedAnswer(fixed_response()), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gc.freeze()  # as the control plane does after start-up
    # The ready line testkit.processes.launch waits for.
    print(f"darb bare grpc listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
