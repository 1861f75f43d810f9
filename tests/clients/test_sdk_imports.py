"""The SDK and CLI import without any of the server's dependencies."""

from __future__ import annotations

import subprocess
import sys

SERVER_ONLY = ("aioboto3", "aiobotocore", "botocore", "httpx", "websockets", "aiohttp", "PIL")

PROBE = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError(f"server-only module {{name}} imported")
        return None

sys.meta_path.insert(0, Block())
import comfyui_grpc_client
import comfyui_grpc_client.cli
from comfyui_grpc_client.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
else:
    raise AssertionError("--help did not exit")
"""


def test_sdk_and_cli_import_without_server_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout
