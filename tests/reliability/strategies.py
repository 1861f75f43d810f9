"""Hypothesis strategies for hostile gateway input.

Requests are built the way a client library would (valid protobuf), with
values a careless or hostile caller might send: huge and negative numbers,
NaN and infinities, any unicode, path traversal and control characters in
names, graphs of the wrong shape, deeply nested and oversized JSON.

``KNOWN_GATEWAY_BUGS`` leaves out inputs that the gateway still answers
with INTERNAL or UNKNOWN (see the reliability report). Set an entry to
False once the gateway handles that input; the fuzz tests then cover it.
"""

from __future__ import annotations

import json
from typing import Any

from comfyui_grpc.v1 import generation_service_pb2 as pb
from google.protobuf import struct_pb2
from hypothesis import strategies as st

KNOWN_GATEWAY_BUGS = {
    # Struct numbers NaN/Infinity: json_format.MessageToDict raises ValueError -> INTERNAL.
    "struct_non_finite_numbers": False,
    # workflow_json "1e999" parses to inf; json.dumps(allow_nan=False) in the ComfyUI
    # client raises -> INTERNAL, and the job stays QUEUED for ever.
    "json_overflowing_floats": False,
    # workflow_json "\ud800": lone surrogates -> UnicodeEncodeError -> INTERNAL or UNKNOWN.
    "json_lone_surrogates": False,
    # GetResult Durations outside the protobuf range: ToTimedelta() overflows -> INTERNAL.
    "out_of_range_durations": False,
    # UploadInput filename ".", names over 255 bytes (255 characters pass) and a
    # content_type with control characters pass the checks; ComfyUI answers 500 and
    # the caller gets UNAVAILABLE ("retry shortly") for ever.
    "upload_names_unchecked": False,
}

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT32 = (-(2**31), 2**31 - 1)

EVIL_NAMES = (
    "..",
    ".",
    "../",
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "a/../../b",
    "%2e%2e%2f%2e%2e%2f",
    "~/.ssh/id_rsa",
    "\x00",
    "a\x00b",
    "\n",
    "\r\n",
    "\t",
    "\x7f",
    "\u202e",
    "\u2044",
    "\uff0f..\uff0f",
    "con",
    "NUL",
    "manifest.json",
    ".comfyui-grpc-meta",
    "-",
    " ",
    "",
    "x" * 64,
    "x" * 65,
    "é" * 200,
    "🙂" * 100,
)
KNOWN_CLASSES = (
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "KSampler",
    "SaveImage",
    "PreviewImage",
    "LoadImage",
    "ImageBatch",
    "GetImageSize",
    "PreviewAny",
    "TestFail",
    "VHS_VideoCombine",
    "SaveAnimatedWEBP",
)

# Strings a protobuf ``string`` field can carry: any unicode except surrogates.
proto_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
names = st.one_of(st.sampled_from(EVIL_NAMES), proto_text)
long_text = st.builds(
    lambda c, n: c * n, st.sampled_from("a\u00e9\U0001f642\n"), st.integers(19_990, 20_010)
)


def uint32s() -> st.SearchStrategy[int]:
    edges = st.sampled_from([0, 1, 7, 8, 63, 64, 200, 201, 1024, 4096, 4104, 2**31, UINT32_MAX])
    return st.one_of(edges, st.integers(0, UINT32_MAX))


def doubles() -> st.SearchStrategy[float | None]:
    """None (unset), edge values, NaN and infinities, anything else."""
    edges = st.sampled_from([0.0, -0.0, -1.0, 1e-300, 60.0, 60.000001, 100.0, 1e308, -1e308])
    return st.one_of(st.none(), edges, st.floats(allow_nan=True, allow_infinity=True))


def _optional(message: Any, field: str, value: Any) -> None:
    if value is not None:
        setattr(message, field, value)


@st.composite
def text_to_image(draw: st.DrawFn) -> pb.GenerateRequest:
    params = pb.TextToImage(
        prompt=draw(st.one_of(proto_text, long_text)),
        negative_prompt=draw(st.one_of(proto_text, long_text)),
        width=draw(uint32s()),
        height=draw(uint32s()),
        steps=draw(uint32s()),
        sampler=draw(names),
        scheduler=draw(names),
        checkpoint=draw(names),
        batch_size=draw(uint32s()),
    )
    _optional(params, "cfg", draw(doubles()))
    _optional(params, "seed", draw(st.one_of(st.none(), st.integers(0, UINT64_MAX))))
    return pb.GenerateRequest(text_to_image=params, **draw(envelopes()))


@st.composite
def video(draw: st.DrawFn) -> pb.GenerateRequest:
    params = pb.Video(
        prompt=draw(st.one_of(proto_text, long_text)),
        negative_prompt=draw(proto_text),
        frames=draw(uint32s()),
        width=draw(uint32s()),
        height=draw(uint32s()),
        motion_module=draw(names),
        checkpoint=draw(names),
        steps=draw(uint32s()),
        format=draw(st.one_of(st.integers(0, 4), st.integers(*INT32))),
        sampler=draw(names),
        scheduler=draw(names),
    )
    _optional(params, "fps", draw(doubles()))
    _optional(params, "cfg", draw(doubles()))
    _optional(params, "seed", draw(st.one_of(st.none(), st.integers(0, UINT64_MAX))))
    return pb.GenerateRequest(video=params, **draw(envelopes()))


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly a plain envelope, so the payload gets checked; one time in four a hostile one."""
    if draw(st.integers(0, 3)):
        return {"retry_on_backend_loss": draw(st.booleans())}
    return {
        "request_id": draw(st.one_of(st.just(""), names, st.text(min_size=120, max_size=140))),
        "labels": draw(st.dictionaries(names, names, max_size=3)),
        "priority": draw(st.one_of(st.integers(0, 3), st.integers(*INT32))),
        "retry_on_backend_loss": draw(st.booleans()),
    }


def hostile_numbers(*, finite: bool) -> st.SearchStrategy[float | int]:
    edges: list[float | int] = [-1, 0, 0.5, -0.0, 1e-300, 1e308, -1e308, 2**53 + 1, 2**64, 16385]
    choices = [
        st.sampled_from(edges),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
    ]
    if not finite:
        choices.append(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return st.one_of(choices)


def json_values(*, finite: bool, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """JSON-like values as a Struct can carry them (numbers are doubles)."""
    numbers = hostile_numbers(finite=finite)
    leaves = st.one_of(st.none(), st.booleans(), numbers, names)
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(names, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


@st.composite
def nodes(draw: st.DrawFn, node_ids: list[str], finite: bool) -> Any:
    """A node: a well-formed one, one of the wrong shape, or any value."""
    values = json_values(finite=finite, max_leaves=8)
    links = st.lists(st.one_of(st.sampled_from(node_ids), names), min_size=2, max_size=2).map(
        lambda pair: [pair[0], 0]
    )
    shaped = st.fixed_dictionaries(
        {
            "class_type": st.one_of(st.sampled_from(KNOWN_CLASSES), names, values),
            "inputs": st.one_of(
                st.dictionaries(names, st.one_of(values, links), max_size=5), values
            ),
        },
        optional={"_meta": values},
    )
    return draw(st.one_of(shaped, values))


@st.composite
def saving_graphs(draw: st.DrawFn, *, finite: bool = True) -> dict[str, Any]:
    """A graph ComfyUI runs, saving under a hostile prefix from a hostile node id;
    sometimes with a hostile number in place of a small one."""
    source, save = draw(st.lists(names.filter(bool), min_size=2, max_size=2, unique=True))
    inputs: dict[str, Any] = {
        "width": draw(st.integers(1, 64)),
        "height": draw(st.integers(1, 64)),
        "batch_size": draw(st.integers(1, 2)),
        "color": draw(st.integers(0, 0xFFFFFF)),
    }
    if draw(st.booleans()):
        inputs[draw(st.sampled_from(sorted(inputs)))] = draw(hostile_numbers(finite=finite))
    return {
        source: {"class_type": "EmptyImage", "inputs": inputs},
        save: {
            "class_type": "SaveImage",
            "inputs": {"images": [source, 0], "filename_prefix": draw(names)},
        },
    }


@st.composite
def raw_graphs(draw: st.DrawFn, *, finite: bool) -> dict[str, Any]:
    node_ids = draw(st.lists(names, max_size=6, unique=True))
    graph = {node_id: draw(nodes(node_ids or ["1"], finite)) for node_id in node_ids}
    if draw(st.booleans()):
        graph.update(draw(saving_graphs()))
    return graph


def to_struct(graph: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(graph)
    return struct


@st.composite
def workflows(draw: st.DrawFn) -> pb.GenerateRequest:
    finite = KNOWN_GATEWAY_BUGS["struct_non_finite_numbers"]
    graph = draw(st.one_of(raw_graphs(finite=finite), saving_graphs(finite=finite)))
    return pb.GenerateRequest(workflow=to_struct(graph), **draw(envelopes()))


def _nested(opening: str, closing: str, depth: int, core: str = "1") -> str:
    return opening * depth + core + closing * depth


def _json_garbage() -> st.SearchStrategy[str]:
    """Not JSON, or JSON nested up to 10,000 levels deep."""
    depth = st.one_of(st.sampled_from([31, 32, 33, 999, 1000, 10_000]), st.integers(1, 10_000))
    return st.one_of(
        proto_text,
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        depth.map(lambda d: _nested("[", "]", d)),
        depth.map(lambda d: _nested('{"a":', "}", d)),
        depth.map(
            lambda d: '{"1": {"class_type": "X", "inputs": {"a": ' + _nested("[", "]", d) + "}}}"
        ),
        depth.map(lambda d: "[" * d),
        st.sampled_from(
            [
                '{"1": {"class_type": "X"}, "1": {"class_type": "Y"}}',
                "\ufeff{}",
                "{}",
                "null",
                "[]",
                '"text"',
                "{",
                '{"1": }',
            ]
        ),
    )


def _json_numbers() -> st.SearchStrategy[str]:
    """A runnable graph with a huge, tiny, long or non-JSON number in it."""
    overflowing = not KNOWN_GATEWAY_BUGS["json_overflowing_floats"]
    edges = ["1e308", "-1e308", "1e-400", "-0", "0.0", "1.5", "9" * 400, "9" * 4301]
    edges += ["NaN", "Infinity", "-Infinity", "01", "+1", ".5", "1e", "0x10"]
    if overflowing:
        edges += ["1e309", "-1e309", "1e999", "-1e99999", "1" * 400 + ".0"]
    exponent = st.integers(-400, 400 if overflowing else 300)
    number = st.one_of(
        st.sampled_from(edges),
        st.integers(1, 5_000).map(lambda n: "9" * n),
        exponent.map(lambda e: f"1e{e}"),
    )
    return number.map(
        lambda n: (
            '{"1": {"class_type": "EmptyImage", "inputs": {"width": NUMBER, "height": 64, '
            '"batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": '
            '{"images": ["1", 0], "filename_prefix": "x"}}}'
        ).replace("NUMBER", n)
    )


def _json_strings() -> st.SearchStrategy[str]:
    """Escapes in node ids and class names: NUL, bidi overrides, (lone) surrogates."""
    escapes = ['"\\u0000"', '"\\u202e"', '"\\ud83d\\ude42"', '"\\\\..\\\\"', '"\\/etc"']
    if not KNOWN_GATEWAY_BUGS["json_lone_surrogates"]:
        escapes += ['"\\ud800"', '"\\udfff"', '"a\\udc00b"']
    template = st.sampled_from(
        [
            '{"1": {"class_type": TEXT, "inputs": {}}}',
            '{TEXT: {"class_type": "SaveImage", "inputs": {}}}',
            '{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, '
            '"batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": '
            '{"images": ["1", 0], "filename_prefix": TEXT}}}',
        ]
    )
    return st.tuples(template, st.sampled_from(escapes)).map(lambda t: t[0].replace("TEXT", t[1]))


def _json_graphs() -> st.SearchStrategy[str]:
    return st.one_of(raw_graphs(finite=True).map(json.dumps), saving_graphs().map(json.dumps))


@st.composite
def _workflow_json(draw: st.DrawFn, documents: st.SearchStrategy[str]) -> pb.GenerateRequest:
    return pb.GenerateRequest(workflow_json=draw(documents), **draw(envelopes()))


GENERATE_FAMILIES: dict[str, st.SearchStrategy[pb.GenerateRequest]] = {
    "text_to_image": text_to_image(),
    "video": video(),
    "workflow": workflows(),
    "workflow_json_garbage": _workflow_json(_json_garbage()),
    "workflow_json_numbers": _workflow_json(_json_numbers()),
    "workflow_json_strings": _workflow_json(_json_strings()),
    "workflow_json_graphs": _workflow_json(_json_graphs()),
}
