"""ComfyUI's binary WebSocket frames: preview images, read strictly and attributed.

Every binary frame starts with a big-endian ``uint32`` event type
(ComfyUI's ``protocol.py`` ``BinaryEventTypes``):

- ``1`` PREVIEW_IMAGE: ``uint32`` format (1 JPEG, 2 PNG), then the image.
  Sent to clients that did not negotiate preview metadata, *after* the
  ``progress`` message of the step it shows, and it names no prompt or node:
  it belongs to whatever prompt and node that ``progress`` named.
- ``3`` TEXT: a node's text (``GetImageSize``); not a preview, ignored.
- ``4`` PREVIEW_IMAGE_WITH_METADATA: ``uint32`` length, that much JSON
  (``node_id``, ``prompt_id``, ``image_type``...), then the image. Sent
  instead of type 1 to clients that sent ``feature_flags`` with
  ``supports_preview_metadata``, *before* its step's ``progress``; so it is
  held until the next text frame, which supplies the step when it is that
  node's ``progress``.

Nothing is trusted: a frame too short for its header, with an unknown image
format, metadata that is not the documented JSON object, or image bytes that
are not the format claimed raises :class:`MalformedMessage` (kind
``preview``); the socket counts it and reads on.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from .messages import (
    Executing,
    ExecutionStart,
    MalformedMessage,
    Message,
    Preview,
    Progress,
)

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

MAX_METADATA_BYTES = 64 * 1024
"""ComfyUI's metadata is ~170 bytes; more is not a preview."""

FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
"""Our first frame on every connection: asks for type-4 previews (prompt id included)."""

_FORMATS = {1: "image/jpeg", 2: "image/png"}
_KIND = "preview"


@dataclass(frozen=True, slots=True)
class Frame:
    """What one preview frame says by itself (type 1 names no prompt or node)."""

    content_type: str
    image: bytes
    prompt_id: str | None = None
    node: str | None = None


def _check_image(content_type: str, image: bytes) -> None:
    if not image:
        raise MalformedMessage(_KIND, "no image bytes")
    if content_type == "image/jpeg":
        ok = image.startswith(b"\xff\xd8\xff")
    elif content_type == "image/png":
        ok = image.startswith(b"\x89PNG\r\n\x1a\n")
    elif content_type == "image/webp":
        ok = image[:4] == b"RIFF" and image[8:12] == b"WEBP"
    else:
        raise MalformedMessage(_KIND, f"image_type {content_type[:40]!r} is not a known image type")
    if not ok:
        raise MalformedMessage(_KIND, f"image bytes are not {content_type}")


def _metadata_text(meta: dict[str, object], key: str) -> str:
    value = meta.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(_KIND, f"metadata {key} is {type(value).__name__}, not a string")
    return value


def read_frame(frame: bytes) -> Frame | None:
    """The preview a binary frame carries, None for other binary events.

    Raises :class:`MalformedMessage` for a preview frame of the wrong shape.
    """
    if len(frame) < 4:
        raise MalformedMessage(_KIND, f"a binary frame of {len(frame)} bytes has no event type")
    (event,) = struct.unpack_from(">I", frame)
    if event == PREVIEW_IMAGE:
        if len(frame) < 8:
            raise MalformedMessage(_KIND, "a type-1 preview without its image format")
        (code,) = struct.unpack_from(">I", frame, 4)
        content_type = _FORMATS.get(code)
        if content_type is None:
            raise MalformedMessage(_KIND, f"image format {code} is not 1 (JPEG) or 2 (PNG)")
        image = frame[8:]
        _check_image(content_type, image)
        return Frame(content_type, image)
    if event == PREVIEW_IMAGE_WITH_METADATA:
        if len(frame) < 8:
            raise MalformedMessage(_KIND, "a type-4 preview without its metadata length")
        (size,) = struct.unpack_from(">I", frame, 4)
        if size > MAX_METADATA_BYTES or 8 + size > len(frame):
            raise MalformedMessage(_KIND, f"metadata length {size} exceeds the frame")
        try:
            meta = json.loads(frame[8 : 8 + size])
        except (ValueError, RecursionError):
            raise MalformedMessage(_KIND, "metadata is not JSON") from None
        if not isinstance(meta, dict):
            raise MalformedMessage(_KIND, "metadata is not a JSON object")
        content_type = _metadata_text(meta, "image_type")
        image = frame[8 + size :]
        _check_image(content_type, image)
        return Frame(
            content_type,
            image,
            prompt_id=_metadata_text(meta, "prompt_id"),
            node=_metadata_text(meta, "node_id"),
        )
    return None  # TEXT, or an event type this gateway does not use


class PreviewAttribution:
    """One socket's view of which prompt, node and step a preview belongs to.

    Fed every message in arrival order; returns what to deliver, previews
    included, in order. ComfyUI sends a prompt's submitter-only messages only
    to the socket that owns it and broadcasts ``progress`` (and previews) of
    prompts without a client id, so the last ``progress`` names the prompt of
    a type-1 frame exactly, ours or not; the tracker drops those not ours.
    """

    def __init__(self) -> None:
        self._prompt = ""
        self._node = ""
        self._step = (0, 0)
        self._held: Frame | None = None

    def connected(self) -> None:
        """A new connection: a held type-4 preview's ``progress`` will never come."""
        self._held = None

    def text(self, message: Message) -> list[Message]:
        """``message``, preceded by the held preview (with its step if this is it)."""
        out: list[Message] = []
        held, self._held = self._held, None
        if held is not None:
            step = (0, 0)
            if (
                isinstance(message, Progress)
                and message.prompt_id == held.prompt_id
                and message.node == held.node
            ):
                step = (message.value, message.max)
            out.append(_preview(held, held.prompt_id or "", held.node or "", step))
        self._follow(message)
        out.append(message)
        return out

    def binary(self, frame: Frame) -> list[Message]:
        """The preview to deliver now (type 1), or none yet (type 4 is held)."""
        out: list[Message] = []
        if frame.prompt_id is not None:
            held, self._held = self._held, frame
            if held is not None:  # two type-4 frames in a row: the first has no step
                out.append(_preview(held, held.prompt_id or "", held.node or "", (0, 0)))
            return out
        if self._prompt:
            out.append(_preview(frame, self._prompt, self._node, self._step))
        return out

    def _follow(self, message: Message) -> None:
        match message:
            case ExecutionStart(prompt_id=prompt):
                self._prompt, self._node, self._step = prompt, "", (0, 0)
            case Executing(node=None):
                self._prompt, self._node, self._step = "", "", (0, 0)
            case Executing(prompt_id=prompt, node=str(node)):
                # After a reconnect ComfyUI announces the node without a prompt id.
                self._prompt = prompt or self._prompt
                if node != self._node:
                    self._node, self._step = node, (0, 0)
            case Progress(prompt_id=prompt, node=node, value=value, max=maximum):
                self._prompt, self._node, self._step = prompt, node, (value, maximum)
            case _:
                pass


def _preview(frame: Frame, prompt_id: str, node: str, step: tuple[int, int]) -> Preview:
    return Preview(prompt_id, node, frame.content_type, frame.image, step[0], step[1])
