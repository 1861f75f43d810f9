"""The simulator's output/, input/ and temp/ folders and ComfyUI's naming rules.

File names follow what clients see from real ComfyUI: ``<prefix>_<counter:05>_.png``
for core save nodes, ``<prefix>_<counter:05>.<ext>`` for VideoHelperSuite, a ``/``
in the prefix makes a subfolder, and counters come from the files already on disk
(so they survive a restart, like ComfyUI's).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

FOLDER_TYPES = ("output", "input", "temp")


class PathEscapeError(ValueError):
    """A prefix or subfolder pointed outside its base folder."""


@dataclass(frozen=True)
class SaveTarget:
    """Where a save node writes: folder on disk, base name, subfolder, next counter."""

    folder: Path
    name: str
    subfolder: str
    counter: int


class Folders:
    """The three ComfyUI folders; missing ones live in a private temporary directory."""

    def __init__(
        self,
        output_dir: Path | None = None,
        input_dir: Path | None = None,
        temp_dir: Path | None = None,
    ) -> None:
        self._scratch: Path | None = None
        if output_dir is None or input_dir is None or temp_dir is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="comfyui-sim-"))
            # Removed when the simulator is garbage collected or the process exits.
            weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)
        self.output = _ready(output_dir or self._private("output"))
        self.input = _ready(input_dir or self._private("input"))
        self.temp = _ready(temp_dir or self._private("temp"))

    def _private(self, name: str) -> Path:
        assert self._scratch is not None
        return self._scratch / name

    def by_type(self, folder_type: str) -> Path | None:
        """The folder for a ``type`` query value, or None when unknown."""
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(folder_type)

    def wipe_temp(self) -> None:
        """ComfyUI empties temp/ when it starts."""
        shutil.rmtree(self.temp, ignore_errors=True)
        self.temp.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        """Remove the private scratch directory, if one was made."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def input_files(self) -> list[str]:
        """Top-level files in input/, sorted: LoadImage's combo choices."""
        return sorted(p.name for p in self.input.iterdir() if p.is_file())

    def annotated(self, name: str) -> tuple[str, Path | None]:
        """Split ``"x.png [output]"`` into the name and the folder it names (None: no tag)."""
        for folder_type in FOLDER_TYPES:
            if name.endswith(f"[{folder_type}]"):
                return name[: -(len(folder_type) + 3)], self.by_type(folder_type)
        return name, None

    def input_file(self, name: str) -> Path | None:
        """The file a LoadImage value names, or None if it does not exist there."""
        plain, tagged = self.annotated(name)
        base = tagged or self.input
        path = (base / plain).resolve()
        if not _inside(base, path) or not path.is_file():
            return None
        return path


def _ready(path: Path) -> Path:
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _inside(base: Path, path: Path) -> bool:
    base = base.resolve()
    return path == base or base in path.parents


def split_prefix(base: Path, filename_prefix: str) -> tuple[Path, str, str]:
    """Folder, base name and subfolder for a ``filename_prefix`` such as ``"gateway/s01"``."""
    normalised = os.path.normpath(filename_prefix)
    subfolder = os.path.dirname(normalised)
    name = os.path.basename(normalised)
    folder = (base / subfolder).resolve()
    if not _inside(base, folder):
        raise PathEscapeError("Saving image outside the output folder is not allowed.")
    return folder, name, subfolder


def comfy_target(base: Path, filename_prefix: str) -> SaveTarget:
    """Next free counter for core save nodes (``name_00001_.png`` style files).

    Only names of the form ``<name>_<digits>_...`` count, across all extensions,
    so ``anim_00001_.webp`` makes the next ``anim`` file ``anim_00002_.png``.
    """
    folder, name, subfolder = split_prefix(base, filename_prefix)
    folder.mkdir(parents=True, exist_ok=True)
    highest = 0
    for entry in os.listdir(folder):
        if entry[: len(name) + 1] != name + "_":
            continue
        digits = entry[len(name) + 1 :].split("_")[0]
        if digits.isdigit():
            highest = max(highest, int(digits))
    return SaveTarget(folder, name, subfolder, highest + 1)


def vhs_target(base: Path, filename_prefix: str) -> SaveTarget:
    """Next free counter for VideoHelperSuite files (``name_00001.mp4`` style)."""
    folder, name, subfolder = split_prefix(base, filename_prefix)
    folder.mkdir(parents=True, exist_ok=True)
    matcher = re.compile(re.escape(name) + r"_(\d+)\D*\..+", re.IGNORECASE)
    highest = 0
    for entry in os.listdir(folder):
        match = matcher.fullmatch(entry)
        if match:
            highest = max(highest, int(match.group(1)))
    return SaveTarget(folder, name, subfolder, highest + 1)
