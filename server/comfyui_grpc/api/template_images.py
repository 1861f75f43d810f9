"""Image parameters given as inline bytes or an earlier job's artifact.

Both end up as an input file on every backend, uploaded like UploadInput
does, before the job is queued: the template then binds a plain file name
and the job can run wherever it is handed. Files are named after their
content's hash, so sending the same image twice uploads the same name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import posixpath
from collections.abc import Mapping
from typing import Any

from ..errors import FieldViolation, InvalidArgument, NotFound
from ..inputs import InputUploader
from ..jobs.service import JobService
from ..v1 import generation_service_pb2 as pb
from ..workflows.template_files import Template
from ..workflows.template_params import PARAMS_FIELD, resolve

MAX_INLINE_IMAGE_BYTES = 8 * 1024 * 1024
MAX_ARTIFACT_IMAGE_BYTES = 64 * 1024 * 1024
PLACEHOLDER = "placeholder.png"
_SHAPES = (
    'the image UploadInput returned, {"bytes": "<base64>"}, or '
    '{"artifact": {"job_id": "...", "key": "..."}}'
)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF8", ".gif"),
    (b"RIFF", ".webp"),
)


def _bad(name: str, why: str) -> InvalidArgument:
    field = f"{PARAMS_FIELD}.{name}"
    return InvalidArgument(
        f"invalid template parameters: {field}: {why}", [FieldViolation(field, why)]
    )


def _suffix(data: bytes, fallback: str = ".png") -> str:
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    return fallback


def _inline(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise _bad(name, "bytes must be a base64 string")
    if len(value) > (MAX_INLINE_IMAGE_BYTES + 2) // 3 * 4 + 4:
        raise _bad(name, f"an inline image is at most {MAX_INLINE_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(name, "bytes must be standard base64") from None
    if not data:
        raise _bad(name, "the inline image is empty")
    if len(data) > MAX_INLINE_IMAGE_BYTES:
        raise _bad(name, f"an inline image is at most {MAX_INLINE_IMAGE_BYTES} bytes")
    return data


async def _artifact(name: str, value: Any, service: JobService) -> tuple[bytes, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(value.get(k), str) and value.get(k) for k in ("job_id", "key")
    ):
        raise _bad(name, 'artifact must be {"job_id": "...", "key": "..."}')
    try:
        job = await service.find(value["job_id"])
    except InvalidArgument:
        raise _bad(name, "artifact.job_id is not a job id") from None
    except NotFound:
        raise _bad(name, f"there is no job {value['job_id']}") from None
    found = [a for a in job.artifacts if value["key"] in (a.key, a.filename)]
    if not found:
        raise _bad(name, f"job {job.job_id} has no artifact {value['key'][:200]!r}")
    artifact = found[0]
    if artifact.size_bytes > MAX_ARTIFACT_IMAGE_BYTES:
        raise _bad(name, f"the artifact is over {MAX_ARTIFACT_IMAGE_BYTES} bytes")
    data = bytearray()
    async for chunk in service.read_artifact(artifact.key, 1024 * 1024):
        data += chunk
    suffix = posixpath.splitext(artifact.filename)[1].lower() or _suffix(bytes(data))
    return bytes(data), suffix


async def _upload(uploader: InputUploader, data: bytes, suffix: str) -> str:
    filename = f"comfyui-grpc-{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    answer = await uploader.upload(
        pb.UploadInputMetadata(filename=filename, overwrite=True), io.BytesIO(data), len(data)
    )
    return answer.image


async def resolve_images(
    template: Template,
    params: Mapping[str, Any],
    *,
    uploader: InputUploader,
    service: JobService,
) -> dict[str, Any]:
    """``params`` with inline and artifact images replaced by uploaded file names.

    Every other parameter is checked first, so a request with a mistake is
    refused before anything is uploaded.
    """
    images = {p.name for p in template.params if p.type == "image"}
    given = {k: v for k, v in params.items() if not (k in images and isinstance(v, Mapping))}
    resolve(template.params, {**{k: PLACEHOLDER for k in params if k not in given}, **given})
    out = dict(params)
    for key in params.keys() - given.keys():
        value = params[key]
        if set(value) == {"bytes"}:
            data = _inline(key, value["bytes"])
            out[key] = await _upload(uploader, data, _suffix(data))
        elif set(value) == {"artifact"}:
            data, suffix = await _artifact(key, value["artifact"], service)
            out[key] = await _upload(uploader, data, suffix)
        else:
            raise _bad(key, f"an image is {_SHAPES}")
    return out
