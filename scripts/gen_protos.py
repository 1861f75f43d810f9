"""Regenerates the Python stubs in server/comfyui_grpc/v1 from protos/.

One pinned command for everyone (and for the drift test):
    python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("comfyui_grpc") / "v1"
DEFAULT_OUT = ROOT / "server"


def generate(out_root: Path) -> list[Path]:
    """Generate stubs under ``out_root/comfyui_grpc/v1`` and return the files written."""
    sources = (PROTO_ROOT / PACKAGE_DIR).glob("*.proto")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in sources)
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        target = out_root / PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted((Path(tmp) / PACKAGE_DIR).iterdir()):
            dest = target / f.name
            shutil.copyfile(f, dest)
            written.append(dest)
        init = target / "__init__.py"
        init.write_text('"""Generated gRPC/protobuf code for comfyui_grpc.v1. Do not edit."""\n')
        written.append(init)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
