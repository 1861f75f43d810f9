"""The blocking client. The gateway runs on the test's event loop, so each
blocking call runs in a worker thread (as it would in a user's program)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest
from client_testkit import slow_workflow
from comfyui_grpc.app import Gateway
from comfyui_grpc_client import (
    Client,
    EventKind,
    InvalidArgumentError,
    JobState,
    ProgressUpdate,
    workflow_request,
)


async def test_sync_generate_calls_back_in_the_callers_thread(
    gateway: Gateway, tmp_path: Path
) -> None:
    def scenario() -> None:
        threads: set[threading.Thread] = set()
        updates: list[ProgressUpdate] = []

        def on_progress(update: ProgressUpdate) -> None:
            threads.add(threading.current_thread())
            updates.append(update)

        with Client(f"127.0.0.1:{gateway.port}") as client:
            result = client.generate_workflow(slow_workflow(3, 0.01), on_progress=on_progress)
            assert result.state is JobState.SUCCEEDED
            assert threads == {threading.current_thread()}
            assert updates[0].kind is EventKind.SNAPSHOT
            assert [u.sequence for u in updates[1:]] == list(range(1, len(updates)))
            assert updates[-1].kind is EventKind.SUCCEEDED
            (path,) = result.download_all(tmp_path / "out")
            assert (
                path.read_bytes()
                == (gateway.settings.storage.local_dir / result.artifacts[0].key).read_bytes()
            )

            # Leaving a watch early closes its stream and leaves the job alone.
            handle = client.start(workflow_request(slow_workflow(50, 0.01, prefix="left")))
            for update in handle.updates():
                if update.kind is EventKind.NODE_PROGRESS:
                    break
            assert handle.result(timeout=30).state is JobState.SUCCEEDED
            assert [j.job_id for j in client.iter_jobs()][:1] == [handle.job_id]

            with pytest.raises(InvalidArgumentError) as caught:
                client.get_result("not-a-uuid")
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT

    await asyncio.to_thread(scenario)
