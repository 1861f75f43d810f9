"""Workflow node and size limits applied before a workflow is built: on the
request's bytes (Struct) and on the JSON text (workflow_json)."""

from __future__ import annotations

import json

import pytest
from comfyui_grpc.api.requests import spec_from_request
from comfyui_grpc.api.wire_checks import generate_request_check
from comfyui_grpc.errors import InvalidArgument
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.workflows import parse_workflow_json
from google.protobuf import struct_pb2

JOB = "00000000-0000-4000-8000-000000000003"


def _graph(nodes: int) -> dict[str, object]:
    return {
        str(i): {"class_type": "KSampler", "inputs": {"seed": i, "model": ["0", 0]}}
        for i in range(nodes)
    }


def _struct_request(nodes: int) -> pb.GenerateRequest:
    struct = struct_pb2.Struct()
    struct.update(_graph(nodes))
    return pb.GenerateRequest(workflow=struct, request_id="r", labels={"a": "b"})


def test_the_wire_check_counts_struct_nodes_up_to_the_limit() -> None:
    check = generate_request_check(max_nodes=10, max_bytes=1 << 20)
    check(_struct_request(10).SerializeToString())
    with pytest.raises(InvalidArgument) as info:
        check(_struct_request(11).SerializeToString())
    assert info.value.reason == "WORKFLOW_TOO_LARGE"
    assert [v.field for v in info.value.violations] == ["workflow"]


def test_the_wire_check_adds_up_a_workflow_sent_in_pieces() -> None:
    # Protobuf merges a message field that appears twice; so does the count.
    check = generate_request_check(max_nodes=10, max_bytes=1 << 20)
    whole = _struct_request(12).workflow
    pieces = []
    for keys in (range(6), range(6, 12)):
        part = struct_pb2.Struct()
        for key in keys:
            part.fields[str(key)].CopyFrom(whole.fields[str(key)])
        pieces.append(pb.GenerateRequest(workflow=part).SerializeToString())
    check(pieces[0])
    assert len(pb.GenerateRequest.FromString(pieces[0] + pieces[1]).workflow.fields) == 12
    with pytest.raises(InvalidArgument):
        check(pieces[0] + pieces[1])


def test_the_wire_check_limits_workflow_bytes() -> None:
    check = generate_request_check(max_nodes=2000, max_bytes=1000)
    with pytest.raises(InvalidArgument, match="at most 1000"):
        check(_struct_request(50).SerializeToString())
    with pytest.raises(InvalidArgument, match="at most 1000"):
        check(pb.GenerateRequest(workflow_json="x" * 1001).SerializeToString())
    check(pb.GenerateRequest(workflow_json="x" * 1000).SerializeToString())


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff\x0f", b"\x1a\x05\x0a", b"\x1b"])
def test_the_wire_check_leaves_undecodable_bytes_to_the_decoder(payload: bytes) -> None:
    generate_request_check(max_nodes=1, max_bytes=10)(payload)


def test_struct_workflows_are_counted_before_conversion() -> None:
    spec_from_request(_struct_request(10), JOB, max_nodes=10)
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(_struct_request(11), JOB, max_nodes=10)
    assert "11 nodes" in info.value.message
    with pytest.raises(InvalidArgument, match="bytes"):
        spec_from_request(_struct_request(10), JOB, max_nodes=10, max_bytes=100)


def test_workflow_json_is_counted_before_parsing() -> None:
    text = json.dumps(_graph(11))
    parse_workflow_json(text, max_nodes=11)
    with pytest.raises(InvalidArgument) as info:
        parse_workflow_json(text, max_nodes=10)
    assert info.value.reason == "WORKFLOW_TOO_LARGE"
    # Keys of nested objects and strings that look like keys do not count.
    tricky = json.dumps({"1": {"class_type": "A", "inputs": {f"k{i}": 'x": ' for i in range(50)}}})
    assert parse_workflow_json(tricky, max_nodes=1)["1"]["class_type"] == "A"


def test_workflow_json_too_deep_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        parse_workflow_json('{"1": ' + "[" * 100_000 + "]" * 100_000 + "}")
