"""Bad input, property-based: the gateway answers every hostile request with a
deliberate status (never UNKNOWN or INTERNAL), keeps serving, and writes
nothing outside its artifact directory's job folders.

Hypothesis drives the examples from a worker thread; each example runs on
the test's event loop, where the gateway and the ComfyUI simulator live.
CI runs 60 examples per property, ``--run-slow`` 1,500. Inputs that still
trip the gateway are listed in ``strategies.KNOWN_GATEWAY_BUGS``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator
from comfyui_grpc.storage.local_store import META_DIR
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import generation_service_pb2_grpc as pb_grpc
from comfyui_grpc.v1 import job_pb2
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import strategies as fz

T = TypeVar("T")
Code = grpc.StatusCode

# Hypothesis draws in a worker thread while the gateway runs on the loop thread; the
# gateway's own use of ``random`` (retry jitter) then looks to Hypothesis like a
# strategy using it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)

GENERATE_CODES = {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED}
LOOKUP_CODES = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


def fuzz_settings(config: pytest.Config) -> settings:
    return settings(
        max_examples=1500 if config.getoption("--run-slow") else 60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,  # every run explores afresh; a failure prints its reproduce blob
        print_blob=True,
    )


async def run_examples(
    strategy: st.SearchStrategy[T],
    check: Callable[[T], Awaitable[None]],
    config: pytest.Config,
) -> None:
    """Run ``check`` on the current loop for every example hypothesis draws."""
    loop = asyncio.get_running_loop()

    @fuzz_settings(config)
    @given(strategy)
    def example(value: T) -> None:
        asyncio.run_coroutine_threadsafe(check(value), loop).result(timeout=120)

    await asyncio.to_thread(example)


async def answered(call: Awaitable[Any], allowed: set[grpc.StatusCode], what: str) -> Any:
    """The response, or None for an allowed error status; fails on any other."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in allowed:
            raise AssertionError(f"{what} answered {exc.code().name}: {exc.details()}") from exc
        return None


async def still_serving(stub: pb_grpc.GenerationServiceStub) -> None:
    await stub.ListJobs(pb.ListJobsRequest(page_size=1), timeout=10)


class Ledger:
    """Jobs the fuzzing created; checked for leftovers once the run is over."""

    def __init__(self, root: Path, simulator: Simulator) -> None:
        self.root = root
        self.simulator = simulator
        self.job_ids: set[str] = set()
        self.outside_before = _listing(root.parent)

    async def settle(self, stub: pb_grpc.GenerationServiceStub) -> None:
        """Every accepted job ends; its artifacts are keyed under its own folder."""
        for job_id in sorted(self.job_ids):
            result = await stub.GetResult(
                pb.GetResultRequest(job_id=job_id, wait_timeout=duration_pb2.Duration(seconds=60)),
                timeout=70,
            )
            assert result.job.state in TERMINAL, f"job {job_id} did not end: {result.job}"
            for artifact in result.job.artifacts:
                assert artifact.key.startswith(f"{job_id}/"), artifact.key

    def clear_inputs(self) -> None:
        folder = self.simulator.folders.input
        shutil.rmtree(folder)
        folder.mkdir()

    def stray_files(self) -> list[str]:
        """Files the gateway or ComfyUI wrote where they should not have."""
        stray = []
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            parts = path.relative_to(self.root).parts
            if parts[0] == "comfyui":  # the simulator's output folder (it refuses escapes)
                continue
            if parts[0] == "artifacts":
                inner = parts[2:] if parts[1:2] == (META_DIR,) else parts[1:]
                if len(inner) >= 2 and inner[0] in self.job_ids:
                    continue
            stray.append(str(path))
        scratch = self.simulator.folders.input.parent
        for path in scratch.rglob("*"):
            if path.is_file() and path.relative_to(scratch).parts[0] not in ("input", "temp"):
                stray.append(str(path))
        new_neighbours = _listing(self.root.parent) - self.outside_before
        stray += [
            f"{self.root.parent / name} (next to the test's directory)" for name in new_neighbours
        ]
        return stray


def _listing(path: Path) -> set[str]:
    return {entry.name for entry in path.iterdir()}


@pytest.fixture
def ledger(tmp_path: Path, simulator: Simulator, gateway: Gateway) -> Ledger:
    # Typed templates must not render full-size pictures for every example.
    simulator.faults.fail_node_class = "KSampler"
    return Ledger(tmp_path, simulator)


@pytest.mark.parametrize("family", sorted(fz.GENERATE_FAMILIES))
async def test_generate_with_hostile_requests(
    family: str,
    request: pytest.FixtureRequest,
    gateway: Gateway,
    stub: pb_grpc.GenerationServiceStub,
    ledger: Ledger,
) -> None:
    async def check(generate: pb.GenerateRequest) -> None:
        response = await answered(stub.Generate(generate, timeout=30), GENERATE_CODES, "Generate")
        if response is not None:
            uuid.UUID(response.job_id)
            ledger.job_ids.add(response.job_id)
        await still_serving(stub)

    await still_serving(stub)
    assert (await answered(stub.Generate(pb.GenerateRequest()), GENERATE_CODES, "Generate")) is None
    await run_examples(fz.GENERATE_FAMILIES[family], check, request.config)
    await ledger.settle(stub)
    assert ledger.stray_files() == []


def _durations() -> st.SearchStrategy[duration_pb2.Duration]:
    """Durations, including ones outside protobuf's +-10,000-year range."""
    spec = 315_576_000_000
    beyond = not fz.KNOWN_GATEWAY_BUGS["out_of_range_durations"]
    edges = [0, 1, -1, 7 * 24 * 3600, 7 * 24 * 3600 + 1, spec, -spec]
    if beyond:
        edges += [spec + 1, -spec - 1, 2**62, -(2**62), 2**63 - 1, -(2**63)]
    limit = 2**63 - 1 if beyond else spec
    return st.builds(
        duration_pb2.Duration,
        seconds=st.one_of(st.sampled_from(edges), st.integers(-limit, limit)),
        nanos=st.one_of(
            st.sampled_from([0, -1, 999_999_999]), st.integers(-(10**9) + 1, 10**9 - 1)
        ),
    )


def _page_tokens() -> st.SearchStrategy[str]:
    encoded = st.one_of(
        st.integers().map(lambda n: f"o:{n}"),
        fz.proto_text,
        st.sampled_from(["o:", "o:1e3", "x:1"]),
    ).map(lambda text: base64.urlsafe_b64encode(text.encode()).decode())
    return st.one_of(encoded, fz.names)


LOOKUP_RPCS = (
    "CancelJob",
    "GetResult",
    "ListJobs",
    "ReadArtifact",
    "StreamProgress",
    "UploadInput",
)


def lookups(real_job: str, real_key: str) -> dict[str, st.SearchStrategy[Any]]:
    """Per RPC but Generate, requests with hostile fields."""
    job_ids = st.one_of(
        st.just(real_job),
        fz.names,
        st.uuids().map(str),
        st.uuids().map(lambda u: "{" + str(u).upper() + "}"),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
    )
    artifacts = st.one_of(st.just(real_key), st.just("manifest.json"), fz.names)
    chunk_sizes = st.one_of(
        st.sampled_from([0, 1, 4095, 4096, 3 << 20, (3 << 20) + 1, fz.UINT32_MAX]),
        st.integers(0, fz.UINT32_MAX),
    )
    unchecked = fz.KNOWN_GATEWAY_BUGS["upload_names_unchecked"]
    page_sizes = st.one_of(st.sampled_from([0, -1, 1, 1000, 1001]), st.integers(*fz.INT32))
    uploads = st.tuples(
        st.builds(
            pb.UploadInputMetadata,
            filename=st.one_of(st.just("ok.png"), fz.names),
            subfolder=st.one_of(st.just(""), fz.names),
            overwrite=st.booleans(),
            content_type=fz.names,
        ).filter(lambda meta: not unchecked or _passes_known_upload_bugs(meta)),
        st.lists(st.binary(max_size=64), max_size=3),
        st.sampled_from(["metadata first", "chunk first", "metadata twice", "empty"]),
    )
    return {
        "GetResult": st.builds(
            pb.GetResultRequest, job_id=job_ids, wait_timeout=_durations(), presign_ttl=_durations()
        ),
        "CancelJob": st.builds(pb.CancelJobRequest, job_id=job_ids),
        "StreamProgress": st.builds(
            pb.StreamProgressRequest, job_id=job_ids, after_sequence=st.integers(0, fz.UINT32_MAX)
        ),
        "ReadArtifact": st.builds(
            pb.ReadArtifactRequest, job_id=job_ids, artifact=artifacts, chunk_size=chunk_sizes
        ),
        "ListJobs": st.builds(
            pb.ListJobsRequest,
            states=st.lists(st.integers(*fz.INT32), max_size=4),
            page_size=page_sizes,
            page_token=_page_tokens(),
        ),
        "UploadInput": uploads,
    }


def _passes_known_upload_bugs(meta: pb.UploadInputMetadata) -> bool:
    """Not one of the upload names the gateway lets through to a ComfyUI 500."""
    segments = [meta.filename, *meta.subfolder.split("/")]
    return (
        meta.filename != "."
        and all(len(part.encode()) <= 255 for part in segments)
        and meta.content_type.isprintable()
    )


def _upload_parts(
    metadata: pb.UploadInputMetadata, chunks: list[bytes], order: str
) -> list[pb.UploadInputRequest]:
    head = [pb.UploadInputRequest(metadata=metadata)]
    body = [pb.UploadInputRequest(chunk=c) for c in chunks]
    return {
        "metadata first": head + body,
        "chunk first": body + head,
        "metadata twice": head + body + head,
        "empty": [],
    }[order]


async def _drain(call: Any) -> int:
    return len([message async for message in call])


async def _stream(parts: list[pb.UploadInputRequest]) -> AsyncIterator[pb.UploadInputRequest]:
    for part in parts:
        yield part


@pytest.mark.parametrize("rpc", LOOKUP_RPCS)
async def test_other_rpcs_with_hostile_requests(
    rpc: str,
    request: pytest.FixtureRequest,
    gateway: Gateway,
    stub: pb_grpc.GenerationServiceStub,
    ledger: Ledger,
) -> None:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f"}},
    }
    real = await stub.Generate(pb.GenerateRequest(workflow=fz.to_struct(graph)), timeout=10)
    ledger.job_ids.add(real.job_id)
    done = await stub.GetResult(
        pb.GetResultRequest(job_id=real.job_id, wait_timeout=duration_pb2.Duration(seconds=30)),
        timeout=40,
    )
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    real_key = done.job.artifacts[0].key

    async def check(message: Any) -> None:
        name = rpc
        match rpc:
            case "StreamProgress":
                call = stub.StreamProgress(message, timeout=10)
                await answered(call.read(), LOOKUP_CODES, name)
                call.cancel()
            case "ReadArtifact":
                # Read to the end (the artifact is tiny): see LocalArtifactStore.read_chunks
                # in the report for what a cancel during the file's open leaks.
                await answered(_drain(stub.ReadArtifact(message, timeout=10)), LOOKUP_CODES, name)
            case "UploadInput":
                parts = _upload_parts(*message)
                call = stub.UploadInput(_stream(parts), timeout=10)
                codes = {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION}
                await answered(call, codes, name)
                # A fresh input/ per example: a file from one example must not block a
                # subfolder of the same name in the next (ComfyUI would answer 500).
                ledger.clear_inputs()
            case "CancelJob":
                await answered(stub.CancelJob(message, timeout=10), LOOKUP_CODES, name)
            case "GetResult":
                # A long wait is allowed; the call's own deadline ends it.
                codes = LOOKUP_CODES | {Code.DEADLINE_EXCEEDED}
                await answered(stub.GetResult(message, timeout=2), codes, name)
            case "ListJobs":
                await answered(stub.ListJobs(message, timeout=10), LOOKUP_CODES, name)
        await still_serving(stub)

    await run_examples(lookups(real.job_id, real_key)[rpc], check, request.config)
    await ledger.settle(stub)
    assert ledger.stray_files() == []


async def test_oversized_and_overdeep_requests(
    gateway: Gateway, stub: pb_grpc.GenerationServiceStub
) -> None:
    limit = gateway.settings.max_message_bytes
    too_big = pb.GenerateRequest(workflow_json=json.dumps({"x": "a" * limit}))
    assert too_big.ByteSize() > limit
    near_limit = pb.GenerateRequest(workflow_json=json.dumps({"x": "a" * (limit - 1024)}))
    assert near_limit.ByteSize() <= limit
    many_nodes = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(2001)}
    deep: dict[str, Any] = {"class_type": "X", "inputs": {}}
    for _ in range(31):  # as deep as a Struct can be decoded (see KNOWN_GATEWAY_BUGS)
        deep = {"a": deep}
    cases = [
        (too_big, Code.RESOURCE_EXHAUSTED),
        (near_limit, Code.INVALID_ARGUMENT),
        (pb.GenerateRequest(workflow=fz.to_struct(many_nodes)), Code.INVALID_ARGUMENT),
        (pb.GenerateRequest(workflow_json=json.dumps(many_nodes)), Code.INVALID_ARGUMENT),
        (pb.GenerateRequest(workflow=fz.to_struct({"1": deep})), Code.INVALID_ARGUMENT),
        (pb.GenerateRequest(workflow_json="[" * 200_000), Code.INVALID_ARGUMENT),
        (
            pb.GenerateRequest(text_to_image=pb.TextToImage(prompt="p" * (limit - 64))),
            Code.INVALID_ARGUMENT,
        ),
    ]
    for message, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(message, timeout=60)
        assert info.value.code() == expected, (message.WhichOneof("input"), info.value.details())
        await still_serving(stub)
