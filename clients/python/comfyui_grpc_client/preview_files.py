"""Writing a job's live previews to disk, the newest per node.

``JOBID8-preview-NODE.jpg`` is replaced atomically (write aside, rename) on
every preview, so an image viewer or a web page polling the file always
sees a whole image, and a directory holds one file per node, not one per
step. The node id comes from ComfyUI, so it is reduced to a safe name.
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import job_file_name
from .progress import Preview


class PreviewFiles:
    """Saves each node's newest preview of one job under ``directory``."""

    def __init__(self, directory: Path, job_id: str) -> None:
        self.directory = directory
        self.job_id = job_id
        self.written = 0
        """How many previews were written (each replaces its node's last one)."""

    def path_for(self, preview: Preview) -> Path:
        return self.directory / job_file_name(
            self.job_id, f"preview-{preview.node_id}{preview.extension}"
        )

    def write(self, preview: Preview) -> Path:
        """Replace the node's preview file with this image; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(preview)
        part = path.with_name(f".{path.name}.part")
        part.write_bytes(preview.image)
        os.replace(part, path)
        self.written += 1
        return path
