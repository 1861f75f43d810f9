"""``python -m comfyui_grpc.simulator``: starts fast, answers, maps its flags, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from comfyui_grpc.simulator import Faults
from comfyui_grpc.simulator.cli import build_parser, simulator_from_args


def test_flags_map_to_simulator_and_faults(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--output-dir", str(tmp_path), "--step-seconds", "0.5", "--http-latency", "0.2",
            "--http-500", "/view", "--http-500", "/prompt", "--ws-drop-after", "3",
            "--fail-node", "KSampler", "--checkpoint", "a.safetensors", "--time-scale", "0.1",
        ]
    )  # fmt: skip
    sim = simulator_from_args(args)
    assert sim.step_seconds == 0.5
    assert sim.time_scale == 0.1
    assert sim.folders.output == tmp_path.resolve()
    assert sim.checkpoints == ("a.safetensors",)
    assert sim.faults.http_latency_seconds == 0.2
    assert sim.faults.http_500_paths == {"/view", "/prompt"}
    assert sim.faults.ws_drop_after_messages == 3
    assert sim.faults.fail_node_class == "KSampler"


def test_hostile_flags_map_to_faults() -> None:
    args = build_parser().parse_args(
        [
            "--ws-malformed", "status", "--ws-malformed", "not_json", "--http-malformed", "/queue",
            "--http-huge", "/history", "--http-huge-bytes", "1000", "--view-endless",
            "--hostile-output-names", "--ws-padding", "10", "--ws-flood-node-changes", "500",
        ]
    )  # fmt: skip
    faults = simulator_from_args(args).faults
    assert faults.malformed_messages == {"status", "not_json"}
    assert faults.malformed_answers == {"/queue"}
    assert faults.huge_answer_paths == {"/history"}
    assert faults.huge_answer_bytes == 1000
    assert faults.endless_view
    assert faults.hostile_output_names
    assert faults.ws_padding_bytes == 10
    assert faults.ws_flood_node_changes == 500
    default = simulator_from_args(build_parser().parse_args([])).faults
    assert default == Faults()


def test_starts_in_under_two_seconds_and_stops_on_sigterm(tmp_path: Path) -> None:
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "comfyui_grpc.simulator",
        "--port",
        "0",
        "--output-dir",
        str(tmp_path),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # printed once listening
            url = line.split()[-1]
            with urllib.request.urlopen(f"{url}/system_stats", timeout=5) as resp:
                stats = json.load(resp)
            elapsed = time.monotonic() - started
            assert stats["system"]["comfyui_version"] == "0.3.64"
            assert elapsed < 2.0, f"took {elapsed:.2f} s"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
