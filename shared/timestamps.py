"""Protobuf ``Timestamp``s to and from Python times: the one place both services and
the SDK convert them. Integer arithmetic, no float rounding: a line's time survives the
agent, the control plane and the SDK unchanged to the microsecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NANOS = 1_000_000_000


def from_datetime(value: datetime) -> Timestamp:
    """An aware datetime as a Timestamp."""
    delta = value - EPOCH
    return Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_nanoseconds(time_ns: int) -> Timestamp:
    """``time.time_ns()`` as a Timestamp."""
    return Timestamp(seconds=time_ns // NANOS, nanos=time_ns % NANOS)


def to_datetime(stamp: Timestamp) -> datetime:
    """A Timestamp as an aware datetime in UTC (to the microsecond)."""
    return EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
