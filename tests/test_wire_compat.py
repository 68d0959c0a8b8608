"""The agent's ``LogLines`` and the control plane's stay wire-identical.

The control plane relays the agent's bytes unchanged: ``handlers/jobs.py`` merges the
serialized ``darb.executor.v1.LogLines`` of a batch into a ``WatchJobResponse``'s
``darb.v1.LogLines``. A field added, renumbered, renamed or retyped on one side only
would reach watchers as garbage or be dropped, without any error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from darb.executor.v1 import executor_pb2 as agent_pb
from darb.v1 import jobs_pb2 as plane_pb

AGENT_LOG_LINES = agent_pb.LogLines.DESCRIPTOR
PLANE_LOG_LINES = plane_pb.LogLines.DESCRIPTOR
TYPE_NAMES = {getattr(FieldDescriptor, n): n for n in dir(FieldDescriptor) if n.startswith("TYPE_")}
Proto = descriptor_pb2.FileDescriptorProto


def shape(message: Descriptor, outer: frozenset[str] = frozenset()) -> dict[int, tuple[Any, ...]]:
    """Every field of ``message`` by number: its name, type, label and oneof, and for a
    message or enum field that type's own shape (a message already being described
    higher up is only named). Package names are left out: they differ by design."""
    inner = outer | {message.full_name}
    return {
        field.number: (
            field.name,
            TYPE_NAMES[field.type],
            label(field),
            field.containing_oneof.name if field.containing_oneof else None,
            type_shape(field, inner),
        )
        for field in message.fields
    }


def label(field: FieldDescriptor) -> str:
    if field.is_repeated:
        return "repeated"
    if field.is_required:
        return "required"
    return "optional" if field.has_presence else "singular"


def type_shape(field: FieldDescriptor, outer: frozenset[str]) -> object:
    if field.message_type is not None:
        nested = field.message_type
        return nested.name if nested.full_name in outer else (nested.name, shape(nested, outer))
    if field.enum_type is not None:
        return {value.number: value.name for value in field.enum_type.values}
    return None


def test_the_two_log_lines_messages_have_one_shape() -> None:
    agent, plane = shape(AGENT_LOG_LINES), shape(PLANE_LOG_LINES)
    assert agent == plane
    assert agent[1][4][0] == "LogLine", "the nested LogLine is compared too"


def populated() -> agent_pb.LogLines:
    """Two lines using every field, values at the edges of their types."""
    sent = agent_pb.LogLines()
    sent.lines.add(
        seq=1,
        stream=agent_pb.LOG_STREAM_STDOUT,
        text="solving acme-core",
        time=Timestamp(seconds=1_700_000_000, nanos=123_000),
    )
    sent.lines.add(
        seq=2**40,
        stream=agent_pb.LOG_STREAM_STDERR,
        text="warning: ünïcødé \ufffd ✓",
        time=Timestamp(seconds=4_102_444_800, nanos=999_999_000),
    )
    return sent


def test_the_agents_bytes_read_as_the_control_planes_lines_and_back() -> None:
    sent = populated()
    wire = sent.SerializeToString()
    event = plane_pb.WatchJobResponse()
    event.log_lines.MergeFromString(wire)  # as the control plane relays a batch
    # MessageToDict leaves unknown fields out: a field the plane lacks shows up here.
    assert MessageToDict(event.log_lines) == MessageToDict(sent)
    relayed = event.log_lines.SerializeToString()
    assert relayed == wire
    assert agent_pb.LogLines.FromString(relayed) == sent


def rebuilt_agent_log_lines(change: Callable[[Proto], None]) -> Descriptor:
    """The agent's LogLines as it would be after ``change`` to its .proto file."""
    pool = descriptor_pool.DescriptorPool()
    for file in (timestamp_pb2.DESCRIPTOR, agent_pb.DESCRIPTOR):
        proto = Proto()
        file.CopyToProto(proto)
        if file is agent_pb.DESCRIPTOR:
            change(proto)
        pool.Add(proto)
    return pool.FindMessageTypeByName(AGENT_LOG_LINES.full_name)


def log_line_field(proto: Proto, name: str) -> descriptor_pb2.FieldDescriptorProto:
    message = next(m for m in proto.message_type if m.name == "LogLine")
    return next(f for f in message.field if f.name == name)


def add_field(proto: Proto) -> None:
    message = next(m for m in proto.message_type if m.name == "LogLine")
    message.field.add(name="host", number=5, type=FieldDescriptor.TYPE_STRING, json_name="host")


def renumber_stderr(proto: Proto) -> None:
    stream = next(e for e in proto.enum_type if e.name == "LogStream")
    next(v for v in stream.value if v.name == "LOG_STREAM_STDERR").number = 3


def set_field(field_name: str, /, **values: Any) -> Callable[[Proto], None]:
    """A change of LogLine's field ``field_name``: ``values`` set on its descriptor."""

    def change(proto: Proto) -> None:
        field = log_line_field(proto, field_name)
        for key, value in values.items():
            setattr(field, key, value)

    return change


CHANGES = {
    "a field added": add_field,
    "a field renumbered": set_field("text", number=6),
    "a field renamed": set_field("text", name="line", json_name="line"),
    "a field retyped": set_field("seq", type=FieldDescriptor.TYPE_SINT64),
    "a string made bytes": set_field("text", type=FieldDescriptor.TYPE_BYTES),
    "a field made repeated": set_field("text", label=FieldDescriptor.LABEL_REPEATED),
    "an enum value renumbered": renumber_stderr,
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_on_one_side_only_breaks_the_shape(change: Callable[[Proto], None]) -> None:
    assert shape(rebuilt_agent_log_lines(lambda proto: None)) == shape(PLANE_LOG_LINES)
    assert shape(rebuilt_agent_log_lines(change)) != shape(PLANE_LOG_LINES)
