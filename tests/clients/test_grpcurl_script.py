"""clients/grpcurl/try.sh run with the real grpcurl binary: plaintext against
the gateway, and against the gateway with its own TLS and bearer token."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

from client_testkit import make_certificates, require_tool, secured_gateway
from comfyui_grpc.app import Gateway
from comfyui_grpc.simulator import Simulator

SCRIPT = Path(__file__).resolve().parents[2] / "clients" / "grpcurl" / "try.sh"


async def try_sh(target: str, out: Path, **env: str) -> tuple[int, str]:
    grpcurl = require_tool("grpcurl")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_GRPC_", "TRY_"))}
    environ.update(GRPCURL=grpcurl, TRY_SIZE="64", TRY_STEPS="3", TRY_OUT=str(out), **env)
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        target,
        env=environ,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def check_walkthrough(code: int, output: str, gateway: Gateway, out: Path) -> None:
    assert code == 0, output
    for step in range(1, 11):
        assert f"### {step}." in output, f"step {step} missing:\n{output}"
    assert "grpc.reflection.v1alpha.ServerReflection" in output
    assert '"status": "SERVING"' in output
    assert '"deduplicated": true' in output
    assert '"state": "JOB_STATE_CANCELLED"' in output
    assert "text_to_image.width" in output
    assert '"image": "try-input' in output
    (saved,) = out.glob("*.png")
    job_id = re.findall(r"all RPCs answered; job (\S+) saved to", output)[0]
    keys = set(re.findall(r'"key": "([^"]+)"', output))
    (key,) = {k for k in keys if k.startswith(job_id) and k.endswith("/" + saved.name)}
    stored = gateway.settings.storage.local_dir / key
    assert saved.read_bytes() == stored.read_bytes()
    assert hashlib.sha256(saved.read_bytes()).hexdigest() in output


async def test_try_sh_plaintext(gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = await try_sh(f"127.0.0.1:{gateway.port}", out)
    check_walkthrough(code, output, gateway, out)


async def test_try_sh_with_tls_and_a_token(simulator: Simulator, tmp_path: Path) -> None:
    certs = make_certificates("gateway.test")
    paths = certs.write(tmp_path)
    async with secured_gateway(
        simulator.url, tmp_path / "gw", token="tok-123", certificates=certs
    ) as gateway:
        target = f"127.0.0.1:{gateway.port}"
        out = tmp_path / "out"
        tls = {
            "COMFYUI_GRPC_CA_CERT": str(paths["ca"]),
            "COMFYUI_GRPC_SERVER_NAME": "gateway.test",
        }
        code, output = await try_sh(target, out, COMFYUI_GRPC_TOKEN="tok-123", **tls)
        check_walkthrough(code, output, gateway, out)
        assert "tok-123" not in output  # the token never appears on a command line
        # The gateway's own check refuses the walkthrough with a wrong token.
        code, output = await try_sh(target, tmp_path / "out2", COMFYUI_GRPC_TOKEN="nope", **tls)
        assert code != 0
        assert "Unauthenticated" in output
