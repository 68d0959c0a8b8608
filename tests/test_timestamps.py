"""shared.timestamps: the one conversion between protobuf Timestamps and Python times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from shared.timestamps import from_datetime, from_nanoseconds, to_datetime

TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(TIMES)
def test_a_time_survives_the_round_trip_to_the_microsecond(value: datetime) -> None:
    stamp = from_datetime(value)
    reference = Timestamp()
    reference.FromDatetime(value)
    assert (stamp.seconds, stamp.nanos) == (reference.seconds, reference.nanos)
    assert to_datetime(stamp) == value
    assert to_datetime(stamp).tzinfo is UTC


@given(st.integers(min_value=0, max_value=2**62))
def test_nanoseconds_become_seconds_and_nanos(time_ns: int) -> None:
    stamp = from_nanoseconds(time_ns)
    assert stamp.seconds * 1_000_000_000 + stamp.nanos == time_ns
    assert 0 <= stamp.nanos < 1_000_000_000
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)
    assert to_datetime(stamp) == expected
