"""The Node.js client's own tests (``node --test``), run against a gateway
serving examples/templates. Skipped locally without node/npm; a failure under
COMFYUI_GRPC_TEST_STRICT=1 (CI)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from client_testkit import require_tool, templated_gateway
from comfyui_grpc.simulator import Simulator

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"


async def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=NODE_DIR,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{' '.join(argv)} failed:\n{text}"
    return text


async def test_node_client_against_the_gateway(simulator: Simulator, tmp_path: Path) -> None:
    node = require_tool("node")
    npm = require_tool("npm")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        # Exactly what package-lock.json pins; node_modules is not committed.
        await run(npm, "ci", "--no-audit", "--no-fund")
    async with templated_gateway(simulator.url, tmp_path) as gateway:
        env = dict(os.environ, COMFYUI_GRPC_TARGET=f"127.0.0.1:{gateway.port}")
        env.pop("COMFYUI_GRPC_TOKEN", None)
        output = await run(node, "--test", "--test-reporter=tap", "test/", env=env, timeout=120)
    counts = dict(re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", output, re.MULTILINE))
    assert counts.get("fail") == "0", output
    assert counts.get("cancelled") == "0", output
    assert counts.get("skipped") == "0", output  # the gateway tests must not skip
    assert int(counts.get("pass", "0")) >= 10, output
    for name in (
        "templates and models are listed with plain values",
        "runTemplate sends an image inline and chains an earlier job's output",
        "the template example runs a template with -p values and an @file image",
    ):
        assert re.search(rf"^\s*ok \d+ - {re.escape(name)}$", output, re.MULTILINE), output
