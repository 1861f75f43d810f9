"""The job state machine and its progress arithmetic, without any I/O."""

from __future__ import annotations

from comfyui_grpc.jobs import events as ev
from comfyui_grpc.jobs.job import Job, JobSpec
from comfyui_grpc.jobs.model import Artifact, JobFailure, JobKind, JobState, OutputFile
from comfyui_grpc.jobs.progress import nodes_to_run
from comfyui_grpc.workflows import TextToImageParams, text_to_image_graph

JOB_ID = "00000000-0000-4000-8000-000000000001"


def _job() -> Job:
    graph = text_to_image_graph(JOB_ID, TextToImageParams(prompt="a cat", steps=4))
    return Job(JOB_ID, JobSpec(kind=JobKind.TEXT_TO_IMAGE, workflow=graph, workflow_sha256="x"))


def _artifact() -> Artifact:
    return Artifact(
        node_id="7",
        filename="image_00001_.png",
        key=f"{JOB_ID}/7/image_00001_.png",
        uri="file:///x",
        content_type="image/png",
        size_bytes=10,
        sha256="0" * 64,
    )


def test_full_run_emits_ordered_events_and_monotonic_fraction() -> None:
    job = _job()
    job.queued(1, "http://comfy")
    job.started()
    job.nodes_cached(["1", "2", "3"])
    for node in ("4", "5"):
        job.node_started(node)
    for step in range(1, 5):
        job.node_progress("5", step, 4)
    job.node_started("6")
    job.node_started("7")
    job.output_reported("7", [OutputFile("7", "image_00001_.png", "comfyui-grpc", "output")])
    job.uploading({"7": [OutputFile("7", "image_00001_.png", "comfyui-grpc", "output")]})
    job.artifact_stored(_artifact())
    job.succeeded()

    events = list(job.log)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    kinds = [type(e.payload).__name__ for e in events]
    assert kinds[:4] == ["Queued", "Started", "NodesCached", "NodeStarted"]
    assert kinds[-3:] == ["Uploading", "ArtifactStored", "Succeeded"]
    assert "NodeFinished" in kinds
    fractions = [e.payload.job_fraction for e in events if isinstance(e.payload, ev.NodeProgressed)]
    assert fractions == sorted(fractions)
    assert 0 < fractions[0] < fractions[-1] < 1
    assert job.state is JobState.SUCCEEDED
    assert job.progress.fraction == 1.0
    assert job.end_time is not None


def test_node_events_without_start_imply_running() -> None:
    job = _job()
    job.node_started("1")
    assert job.state is JobState.RUNNING
    assert [type(e.payload) for e in job.log] == [ev.Started, ev.NodeStarted]


def test_terminal_state_is_final() -> None:
    job = _job()
    job.started()
    job.failed(JobFailure(reason="EXECUTION_ERROR", message="boom"))
    job.cancelled()
    job.node_progress("5", 1, 4)
    assert job.state is JobState.FAILED
    assert job.log.ended
    assert isinstance(list(job.log)[-1].payload, ev.Failed)


def test_cancel_records_whether_it_was_running() -> None:
    queued, running = _job(), _job()
    running.started()
    queued.cancelled()
    running.cancelled()
    assert list(queued.log)[-1].payload == ev.Cancelled(was_running=False)
    assert list(running.log)[-1].payload == ev.Cancelled(was_running=True)


def test_nodes_to_run_is_the_upstream_closure_of_outputs() -> None:
    graph = text_to_image_graph(JOB_ID, TextToImageParams(prompt="x"))
    graph["99"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "dangling", "clip": ["1", 1]}}
    assert set(nodes_to_run(graph)) == {"1", "2", "3", "4", "5", "6", "7"}
