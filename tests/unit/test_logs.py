"""JSON log lines carry the job and backend they are about."""

from __future__ import annotations

import json
import logging

from comfyui_grpc.logs import JsonFormatter, TextFormatter


def _record(**extra: str) -> logging.LogRecord:
    record = logging.LogRecord(
        "comfyui_grpc.jobs", logging.INFO, __file__, 1, "job %s", ("ok",), None
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_have_job_and_backend_fields() -> None:
    line = JsonFormatter().format(_record(job_id="j-1", backend="http://comfy:8188"))
    entry = json.loads(line)
    assert entry["message"] == "job ok"
    assert entry["job_id"] == "j-1"
    assert entry["backend"] == "http://comfy:8188"
    assert entry["level"] == "info"


def test_text_lines_append_the_context() -> None:
    line = TextFormatter().format(_record(job_id="j-1"))
    assert line.endswith("job ok [job_id=j-1]")
