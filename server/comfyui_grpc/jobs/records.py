"""Jobs and events as JSON records, for the durable job store.

Plain functions over the domain types; the store decides where they go.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from . import events as ev
from .job import Job, JobSpec
from .model import Artifact, JobFailure, JobKind, JobState, OutputFile

_PAYLOADS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ev.Queued,
        ev.Started,
        ev.NodeStarted,
        ev.NodeProgressed,
        ev.NodesCached,
        ev.NodeFinished,
        ev.Uploading,
        ev.ArtifactStored,
        ev.Succeeded,
        ev.Failed,
        ev.Cancelled,
    )
}


def event_to_json(event: ev.Event) -> str:
    payload = dataclasses.asdict(event.payload)
    payload["type"] = type(event.payload).__name__
    return json.dumps(
        {
            "sequence": event.sequence,
            "state": event.state.value,
            "time": event.time,
            "payload": payload,
        },
        separators=(",", ":"),
    )


def event_from_json(job_id: str, text: str) -> ev.Event:
    data = json.loads(text)
    payload = dict(data["payload"])
    cls = _PAYLOADS[payload.pop("type")]
    if "artifact" in payload:
        payload["artifact"] = Artifact(**payload["artifact"])
    if "artifacts" in payload:
        payload["artifacts"] = tuple(Artifact(**a) for a in payload["artifacts"])
    if "failure" in payload:
        payload["failure"] = JobFailure(**payload["failure"])
    if "node_ids" in payload:
        payload["node_ids"] = tuple(payload["node_ids"])
    return ev.Event(
        job_id=job_id,
        sequence=int(data["sequence"]),
        state=JobState(data["state"]),
        time=float(data["time"]),
        payload=cls(**payload),
    )


def job_to_json(job: Job) -> str:
    spec = job.spec
    return json.dumps(
        {
            "spec": {
                "kind": spec.kind.value,
                "workflow": spec.workflow,
                "workflow_sha256": spec.workflow_sha256,
                "request_id": spec.request_id,
                "labels": dict(spec.labels),
                "front": spec.front,
                "retry_on_backend_loss": spec.retry_on_backend_loss,
                "caller": spec.caller,
                "fingerprint": spec.fingerprint,
                "source_field": spec.source_field,
                "field_map": [[k[0], k[1], v] for k, v in spec.field_map.items()],
                "template": spec.template,
                "template_version": spec.template_version,
                "template_params": dict(spec.template_params),
                "output_nodes": sorted(spec.output_nodes),
                "callback_url": spec.callback_url,
            },
            "state": job.state.value,
            "backend": job.backend,
            "create_time": job.create_time,
            "start_time": job.start_time,
            "end_time": job.end_time,
            "queue_number": job.queue_number,
            "cancel_requested": job.cancel_requested,
            "attempts": job.attempts,
            "failure": None if job.failure is None else dataclasses.asdict(job.failure),
            "artifacts": [dataclasses.asdict(a) for a in job.artifacts],
            "outputs": {
                node: [dataclasses.asdict(f) for f in files] for node, files in job.outputs.items()
            },
        },
        separators=(",", ":"),
    )


def job_from_json(
    job_id: str, text: str, events: list[ev.Event], *, sequence_gap: bool = True
) -> Job:
    """Rebuild a job, its event log and its progress from a record and its events.

    ``sequence_gap``: new events start past a gap (see :meth:`EventLog.restore`);
    not needed when every event is known to be recorded.
    """
    data = json.loads(text)
    s = data["spec"]
    spec = JobSpec(
        kind=JobKind(s["kind"]),
        workflow=s["workflow"],
        workflow_sha256=s["workflow_sha256"],
        request_id=s["request_id"],
        labels=s["labels"],
        front=s["front"],
        retry_on_backend_loss=s["retry_on_backend_loss"],
        caller=s.get("caller", "anonymous"),
        fingerprint=s["fingerprint"],
        source_field=s["source_field"],
        field_map={(a, b): c for a, b, c in s["field_map"]},
        template=s.get("template", ""),
        template_version=s.get("template_version", 0),
        template_params=s.get("template_params", {}),
        output_nodes=frozenset(s.get("output_nodes", ())),
        callback_url=s.get("callback_url", ""),
    )
    job = Job(job_id, spec)
    job.restore(
        state=JobState(data["state"]),
        backend=data["backend"],
        create_time=data["create_time"],
        start_time=data["start_time"],
        end_time=data["end_time"],
        queue_number=data["queue_number"],
        cancel_requested=data["cancel_requested"],
        attempts=data["attempts"],
        failure=None if data["failure"] is None else JobFailure(**data["failure"]),
        artifacts=[Artifact(**a) for a in data["artifacts"]],
        outputs={node: [OutputFile(**f) for f in files] for node, files in data["outputs"].items()},
        events=events,
        sequence_gap=sequence_gap,
    )
    return job
