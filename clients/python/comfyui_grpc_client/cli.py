"""The ``comfyui-grpc`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print("comfyui-grpc: commands are being wired up", args, file=sys.stderr)
    return 2
