"""Unary gRPC load from h2load (nghttp2's HTTP/2 benchmark tool, Debian's nghttp2-client).

A Python gRPC client spends CPU per call on the scale of what the control plane spends
to serve it, and on 2 cores that caps what a figure can show. h2load costs a small
fraction of that (both in docs/benchmarks.md). It knows HTTP/2, not gRPC: it sends one
fixed, already framed request body and counts HTTP statuses, while gRPC puts its status
in trailers. So every answer is checked by size: a success carries the one expected
message, and an error carries no message at all, so the data received must be exactly
that message times the number of calls.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

H2LOAD = shutil.which("h2load")
INSTALL_HINT = "apt-get install nghttp2-client"


def grpc_frame(message: Message) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, bytes."""
    data = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


@dataclass
class H2Result:
    rate: float  # calls per second
    latencies: list[float]  # seconds, every call
    data_bytes: int  # response message bytes received

    def all_succeeded(self, response: Message) -> bool:
        """True when every call received ``response``: an error carries no message."""
        return self.data_bytes == len(grpc_frame(response)) * len(self.latencies)


def run(
    url: str, request: Message, token: str, clients: int, calls: int, scratch: Path
) -> H2Result:
    """``calls`` calls over ``clients`` connections, one call in flight on each."""
    if H2LOAD is None:
        raise RuntimeError(f"h2load is not installed ({INSTALL_HINT})")
    body, log = scratch / "h2load-body", scratch / "h2load-requests.tsv"
    body.write_bytes(grpc_frame(request))
    log.unlink(missing_ok=True)  # h2load appends
    command = [H2LOAD, "-c", str(clients), "-m", "1", "-n", str(calls)]
    command += ["--log-file", str(log), "-d", str(body)]
    for header in ("content-type: application/grpc", "te: trailers"):
        command += ["-H", header]
    command += ["-H", f"authorization: Bearer {token}", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    # Columns: start (us since epoch), HTTP status, duration (us).
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)
    data = re.search(r"traffic: .*\((\d+)\) data", output)
    if rate is None or data is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    latencies = [int(row[2]) / 1e6 for row in rows if row[1] == "200"]
    if len(latencies) != calls:
        raise RuntimeError(f"{calls - len(latencies)} of {calls} calls failed at the HTTP level")
    return H2Result(float(rate.group(1)), latencies, int(data.group(1)))
