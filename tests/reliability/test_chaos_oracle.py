"""The chaos oracle itself: each rule catches what it is meant to catch.

Fabricated histories, no processes: a simulator's submissions and stops are
written by hand, so every rule of :func:`chaos.verify` is shown to fail.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from comfyui_grpc.v1 import generation_service_pb2 as pb
from comfyui_grpc.v1 import job_pb2

from .chaos import FAIL_CLASS, ChaosJob, SimBackend, Stop, verify

PNG = b"\x89PNG fake image bytes"


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[list[SimBackend]]:
    made = [SimBackend("sim-a", tmp_path), SimBackend("sim-b", tmp_path)]
    for port, backend in enumerate(made, start=41001):
        backend.sim.port = port  # never started: only its address is needed
        backend.histories.append({})
    yield made
    for backend in made:
        await backend.close()


def succeeded(job_id: str, backend: SimBackend, end: float, body: bytes = PNG) -> job_pb2.Job:
    digest = hashlib.sha256(body).hexdigest()
    job = job_pb2.Job(job_id=job_id, state=job_pb2.JOB_STATE_SUCCEEDED, backend=backend.url)
    job.end_time.FromNanoseconds(int(end * 1e9))
    job.artifacts.add(
        node_id="3",
        filename="job0_00001_.png",
        key=f"chaos/{job_id}/3/job0_00001_.png",
        sha256=digest,
        size_bytes=len(body),
    )
    return job


def stored(job: job_pb2.Job, body: bytes = PNG) -> dict[str, bytes]:
    artifacts = [
        {"key": a.key, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in job.artifacts
    ]
    manifest = json.dumps({"state": "succeeded", "artifacts": artifacts}).encode()
    return {job.artifacts[0].key: body, f"chaos/{job.job_id}/manifest.json": manifest}


def ran(backend: SimBackend, job_id: str, at: float, outcome: str = "success") -> None:
    backend.submissions.stamps.append((at, job_id))
    backend.histories[-1][job_id] = outcome


def wrote(backend: SimBackend, body: bytes = PNG) -> None:
    path = backend.output_dir / "chaos" / "job0_00001_.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def chaos_job(job_id: str, final: job_pb2.Job, kind: str = "ok") -> ChaosJob:
    terminal = job_pb2.JobState.Name(final.state).removeprefix("JOB_STATE_").lower()
    return ChaosJob(
        index=0,
        kind=kind,
        request=pb.GenerateRequest(),
        job_id=job_id,
        terminal_event=terminal,
        final=final,
    )


async def test_a_clean_success_passes(backends: list[SimBackend]) -> None:
    a, _ = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0)
    wrote(a)
    final = succeeded(job_id, a, 11.0)
    problems, _ = verify([chaos_job(job_id, final)], backends, stored(final))
    assert problems == []


async def test_a_second_submission_without_a_restart_is_caught(
    backends: list[SimBackend],
) -> None:
    a, b = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0)
    ran(b, job_id, 10.5)
    wrote(b)
    final = succeeded(job_id, b, 11.0)
    problems, _ = verify([chaos_job(job_id, final)], backends, stored(final))
    assert any("submitted twice" in p for p in problems), problems


async def test_a_resubmission_after_the_backend_restarted_is_allowed(
    backends: list[SimBackend],
) -> None:
    a, b = backends
    job_id = str(uuid.uuid4())
    a.submissions.stamps.append((10.0, job_id))  # lost in the restart: no history
    a.stops.append(Stop(snapshot_time=10.2, down_time=10.3, gone_time=10.4))
    a.histories.append({})
    ran(b, job_id, 12.0)
    wrote(b)
    final = succeeded(job_id, b, 13.0)
    problems, _ = verify([chaos_job(job_id, final)], backends, stored(final))
    assert problems == []


async def test_backend_lost_without_a_restart_is_caught(backends: list[SimBackend]) -> None:
    a, _ = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0)
    final = job_pb2.Job(job_id=job_id, state=job_pb2.JOB_STATE_FAILED, backend=a.url)
    final.error.reason = "BACKEND_LOST"
    final.end_time.FromSeconds(11)
    problems, _ = verify([chaos_job(job_id, final)], backends, {})
    assert any("BACKEND_LOST" in p for p in problems), problems


async def test_a_wrong_outcome_is_caught(backends: list[SimBackend]) -> None:
    a, _ = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0, outcome="error")
    wrote(a)
    final = succeeded(job_id, a, 11.0)
    problems, _ = verify([chaos_job(job_id, final, kind="fail")], backends, stored(final))
    assert any("history says error" in p for p in problems), problems
    assert any("SUCCEEDED" in p for p in problems), problems


async def test_failing_in_another_node_is_caught(backends: list[SimBackend]) -> None:
    a, _ = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0, outcome="error")
    final = job_pb2.Job(job_id=job_id, state=job_pb2.JOB_STATE_FAILED, backend=a.url)
    final.error.reason = "EXECUTION_ERROR"
    final.error.class_type = "SaveImage"
    final.end_time.FromSeconds(11)
    problems, _ = verify([chaos_job(job_id, final, kind="fail")], backends, {})
    assert any(f"not {FAIL_CLASS}" in p for p in problems), problems


async def test_artifacts_that_differ_from_s3_or_comfyui_are_caught(
    backends: list[SimBackend],
) -> None:
    a, _ = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0)
    wrote(a, b"what ComfyUI wrote")
    final = succeeded(job_id, a, 11.0)
    objects = stored(final, b"something else")
    objects[f"chaos/{uuid.uuid4()}/stray.png"] = b"x"
    problems, _ = verify([chaos_job(job_id, final)], backends, objects)
    assert any("S3 has" in p for p in problems), problems
    assert any("file ComfyUI wrote" in p for p in problems), problems
    assert any("outside chaos/<job id>/" in p for p in problems), problems


async def test_an_unknown_prompt_and_a_missing_manifest_are_caught(
    backends: list[SimBackend],
) -> None:
    a, _ = backends
    job_id = str(uuid.uuid4())
    ran(a, job_id, 10.0)
    ran(a, str(uuid.uuid4()), 10.1)
    wrote(a)
    final = succeeded(job_id, a, 11.0)
    objects = stored(final)
    del objects[f"chaos/{job_id}/manifest.json"]
    problems, _ = verify([chaos_job(job_id, final)], backends, objects)
    assert any("which no client was given" in p for p in problems), problems
    assert any("no manifest.json" in p for p in problems), problems
