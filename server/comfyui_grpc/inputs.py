"""Input images for image-to-image workflows, uploaded to every backend.

A job may run on any backend, so an input goes to all healthy ones. ComfyUI
renames a clashing file (``name (1).png``); every backend must end up with
the same name, or the workflow would point at different files.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from typing import IO

from .backends import BackendPool
from .comfyui.errors import ComfyUIUnavailable, ComfyUIValidationError
from .errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable
from .v1 import generation_service_pb2 as pb

_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")


def _bad_part(part: str) -> bool:
    """A path part that is empty, only dots and spaces (``" .."`` reads as, and on
    Windows becomes, ``..``), padded with spaces, or over 255 bytes."""
    return part.strip(". ") == "" or part != part.strip() or len(part.encode()) > 255


def _check_name(field: str, value: str, *, allow_slash: bool) -> None:
    parts = value.replace("\\", "/").split("/")
    bad = (
        not value.isprintable()
        or value.startswith(("/", "\\"))
        or any(_bad_part(part) for part in parts)
        or (not allow_slash and len(parts) > 1)
    )
    if bad:
        raise InvalidArgument(
            f"{field} {value[:80]!r} is not allowed: {'' if allow_slash else 'no directories, '}"
            "no names of only dots and spaces, no spaces around a name, no control "
            "characters, no parts over 255 bytes",
            [
                FieldViolation(
                    f"metadata.{field}",
                    "a plain name; each part 1-255 bytes, not only dots, no surrounding spaces",
                )
            ],
        )


class InputUploader:
    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool

    async def upload(
        self, metadata: pb.UploadInputMetadata, data: IO[bytes], size: int
    ) -> pb.UploadInputResponse:
        if not metadata.filename:
            raise InvalidArgument(
                "metadata.filename is required", [FieldViolation("metadata.filename", "required")]
            )
        _check_name("filename", metadata.filename, allow_slash=False)
        if metadata.subfolder:
            _check_name("subfolder", metadata.subfolder, allow_slash=True)
        if metadata.content_type and not _CONTENT_TYPE.match(metadata.content_type):
            raise InvalidArgument(
                f"content_type {metadata.content_type[:80]!r} is not a MIME type",
                [FieldViolation("metadata.content_type", "a MIME type such as image/png")],
            )
        content_type = (
            metadata.content_type
            or mimetypes.guess_type(metadata.filename)[0]
            or "application/octet-stream"
        )
        backends = self.pool.healthy
        if not backends:
            raise Unavailable("no ComfyUI backend is reachable right now; retry shortly")
        names: set[tuple[str, str]] = set()
        for backend in backends:
            data.seek(0)
            try:
                result = await backend.client.upload_image(
                    name=metadata.filename,
                    data=data,
                    content_type=content_type,
                    subfolder=metadata.subfolder,
                    overwrite=metadata.overwrite,
                )
            except ComfyUIValidationError as exc:
                raise InvalidArgument(str(exc), [FieldViolation("metadata", str(exc))]) from exc
            except ComfyUIUnavailable as exc:
                raise Unavailable(f"uploading to {backend.url} failed: {exc}") from exc
            names.add((str(result.get("name", "")), str(result.get("subfolder", ""))))
        if len(names) != 1:
            raise FailedPrecondition(
                f"the backends stored {metadata.filename!r} under different names {sorted(names)}; "
                "upload with overwrite=true",
                reason="INPUT_NAME_DIFFERS",
            )
        name, subfolder = names.pop()
        image = posixpath.join(subfolder, name) if subfolder else name
        return pb.UploadInputResponse(
            image=image,
            name=name,
            subfolder=subfolder,
            backends=[b.url for b in backends],
            size_bytes=size,
        )
