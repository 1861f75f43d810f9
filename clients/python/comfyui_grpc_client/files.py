"""Where a downloaded artifact lands on the caller's disk.

The file name an artifact carries comes from ComfyUI through the gateway, so
it is data, not a path: it may hold directories, ``..`` or be absolute, and
every job's first image is called ``image_00001_.png``. A download into a
directory therefore

- reduces the name to a safe base name (no separators, no leading dots,
  no control characters), so nothing is ever written outside that directory;
- prefixes it with the job id's first eight characters, so the outputs of
  different jobs sit side by side;
- never replaces a file already there: a name that is taken gets ``-2``,
  ``-3``, ... before its extension. The final name is claimed with a hard
  link, which fails instead of overwriting, so two downloads racing for one
  name each keep their own file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FALLBACK_NAME = "artifact"
MAX_NAME_CHARS = 200
MAX_NUMBERED = 10_000

_UNSAFE = re.compile(r"[\x00-\x1f\x7f<>:\"|?*]")


def safe_name(filename: str) -> str:
    """The last path component of ``filename`` with nothing that could escape
    a directory or surprise a shell; ``artifact`` when nothing is left."""
    base = re.split(r"[\\/]", filename)[-1]
    base = _UNSAFE.sub("_", base).strip().lstrip(".")
    if len(base) > MAX_NAME_CHARS:
        stem, dot, suffix = base.rpartition(".")
        keep = MAX_NAME_CHARS - len(suffix) - 1
        base = f"{stem[:keep]}.{suffix}" if dot and keep > 0 else base[:MAX_NAME_CHARS]
    return base or FALLBACK_NAME


def job_file_name(job_id: str, filename: str) -> str:
    """``JOBID8-name``: the job id's first eight characters and the safe name."""
    prefix = safe_name(job_id)[:8]
    return f"{prefix}-{safe_name(filename)}"


def numbered(name: str, number: int) -> str:
    """``name`` for 1, else ``stem-N.suffix``."""
    if number == 1:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{number}"
    return f"{stem}-{number}.{suffix}"


def place(part: Path, directory: Path, name: str) -> Path:
    """Move the finished ``part`` file into ``directory`` under ``name``, or the
    first numbered variant not taken; never replaces an existing file."""
    for number in range(1, MAX_NUMBERED + 1):
        path = directory / numbered(name, number)
        try:
            os.link(part, path)
        except FileExistsError:
            continue
        except OSError:
            # No hard links here (some network and FAT file systems): check, then move.
            if path.exists():
                continue
            os.replace(part, path)
            return path
        part.unlink(missing_ok=True)
        return path
    raise FileExistsError(f"{directory / name} and {MAX_NUMBERED - 1} numbered variants exist")
