"""The registry's per-state counts stay equal to a count over its jobs, whatever happens."""

from __future__ import annotations

import random
import uuid

import pytest
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.model import FailureReason, JobFailure, JobKind, JobState
from comfyui_grpc.jobs.registry import JobRegistry

OPEN_STATES = [s for s in JobState if not s.terminal]


def _job() -> Job:
    return Job(str(uuid.uuid4()), JobSpec(kind=JobKind.WORKFLOW, workflow={}, workflow_sha256=""))


def _brute_force(registry: JobRegistry, state: JobState) -> int:
    return sum(1 for job in registry if job.state is state)


def _step(registry: JobRegistry, jobs: list[Job], rng: random.Random) -> None:
    """One thing that happens to jobs in a running gateway."""
    action = rng.choice(["add", "start", "upload", "end", "requeue", "discard", "finish"])
    if action == "add" or not jobs:
        job = _job()
        jobs.append(job)
        registry.add(job)
        return
    job = rng.choice(jobs)
    if action == "start":
        job.started()
    elif action == "upload":
        job.uploading({})
    elif action == "end":
        rng.choice(
            [
                job.succeeded,
                job.cancelled,
                lambda: job.failed(JobFailure(reason=FailureReason.BACKEND_LOST, message="x")),
            ]
        )()
    elif action == "requeue" and not job.terminal:
        job.requeued()
    elif action == "discard":
        registry.discard(job)
        jobs.remove(job)
    elif action == "finish" and job.terminal:
        registry.finished(job)


@pytest.mark.parametrize("seed", range(20))
def test_counts_match_the_jobs_after_random_lifecycles(seed: int) -> None:
    rng = random.Random(seed)
    registry = JobRegistry(max_finished=5)
    jobs: list[Job] = []
    for _ in range(300):
        _step(registry, jobs, rng)
        for state in OPEN_STATES:
            assert registry.count(state) == _brute_force(registry, state), state


def test_waiting_count_follows_transitions() -> None:
    registry = JobRegistry()
    first, second = _job(), _job()
    registry.add(first)
    registry.add(second)
    registry.add(first)  # adding again (a deduplicated request) counts once
    assert registry.count(JobState.QUEUED) == 2
    first.started()
    assert (registry.count(JobState.QUEUED), registry.count(JobState.RUNNING)) == (1, 1)
    first.requeued()
    assert registry.count(JobState.QUEUED) == 2
    second.cancelled()
    registry.finished(second)
    assert registry.count(JobState.QUEUED) == 1
    assert registry.count(JobState.CANCELLED) == 1
