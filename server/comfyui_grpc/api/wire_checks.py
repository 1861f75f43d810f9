"""Checks on a request's bytes, before protobuf decodes them.

Decoding a ``google.protobuf.Struct`` builds every value it holds: a
5 MB workflow of 100,000 nodes costs about 50 MB and a tenth of a second
before the node limit can even be asked. The Generate check walks the wire
format instead: it skips from field to field by their lengths, counts the
workflow's top-level entries only up to the limit, and refuses at the first
one over it. Bytes it cannot follow are left to the decoder, which answers
them as undecodable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..v1 import generation_service_pb2 as pb
from ..workflows.graph import too_large, too_many_bytes

_WORKFLOW = pb.GenerateRequest.DESCRIPTOR.fields_by_name["workflow"].number
_WORKFLOW_JSON = pb.GenerateRequest.DESCRIPTOR.fields_by_name["workflow_json"].number
_STRUCT_FIELDS = 1  # google.protobuf.Struct: map<string, Value> fields = 1;
_LENGTH_DELIMITED = 2


class _Malformed(Exception):
    """Bytes this walk cannot follow; the decoder will say what is wrong."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while shift < 64:
        if pos >= len(data):
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise _Malformed


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field in ``data[start:end]``."""
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, after = _varint(data, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:  # groups: not in these messages
            raise _Malformed
        if after > end:
            raise _Malformed
        yield tag >> 3, wire, pos, after
        pos = after


def generate_request_check(max_nodes: int, max_bytes: int) -> Callable[[bytes], None]:
    """A check refusing a GenerateRequest whose raw workflow has more than
    ``max_nodes`` nodes or more than ``max_bytes`` bytes, without decoding it."""

    def check(data: bytes) -> None:
        try:
            _check(data)
        except _Malformed:
            return

    def _check(data: bytes) -> None:
        nodes = 0
        sizes = {_WORKFLOW: 0, _WORKFLOW_JSON: 0}
        # A message field that appears twice is merged, so entries and sizes add up.
        for number, wire, start, end in _fields(data, 0, len(data)):
            if wire != _LENGTH_DELIMITED or number not in sizes:
                continue
            sizes[number] += end - start
            if sizes[number] > max_bytes:
                field = "workflow" if number == _WORKFLOW else "workflow_json"
                raise too_many_bytes(field, sizes[number], max_bytes)
            if number != _WORKFLOW:
                continue
            for inner, inner_wire, _, _ in _fields(data, start, end):
                if inner == _STRUCT_FIELDS and inner_wire == _LENGTH_DELIMITED:
                    nodes += 1
                    if nodes > max_nodes:
                        raise too_large("workflow", None, max_nodes)

    return check
