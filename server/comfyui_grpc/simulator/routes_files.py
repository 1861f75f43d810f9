"""File routes: ``GET /view`` and ``POST /upload/image``, with ComfyUI's status codes.

``/view`` serves files through aiohttp's FileResponse, as ComfyUI does, so
Range (206), Etag, Last-Modified and Accept-Ranges come out the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from PIL import Image

from .files import Folders
from .services import Services

# Never let a browser render these inline.
_DOWNLOAD_ONLY = {
    "text/html",
    "text/html-sandboxed",
    "application/xhtml+xml",
    "text/javascript",
    "text/css",
}
_EXTRA_TYPES = {
    ".webp": "image/webp",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".gif": "image/gif",
}


def content_type_for(filename: str) -> str:
    ext = os.path.splitext(filename)[1].lower()
    guessed = (
        _EXTRA_TYPES.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    )
    return "application/octet-stream" if guessed in _DOWNLOAD_ONLY else guessed


def _inside(base: Path, path: Path) -> bool:
    return os.path.commonpath((str(base), str(path))) == str(base)


def _reencoded(path: Path, query: Mapping[str, str], filename: str) -> web.Response | None:
    """``preview=`` and ``channel=`` answers, or None to serve the file as is."""
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    channel = query.get("channel", "rgba")
    if "preview" in query:
        parts = query["preview"].split(";")
        image_format = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
        quality = int(parts[-1]) if parts[-1].isdigit() else 90
        with Image.open(path) as img:
            picture = (
                img.convert("RGB") if image_format == "jpeg" or channel == "rgb" else img.copy()
            )
        out = io.BytesIO()
        picture.save(out, format=image_format, quality=quality)
        return web.Response(
            body=out.getvalue(), content_type=f"image/{image_format}", headers=disposition
        )
    if channel not in ("rgb", "a"):
        return None
    with Image.open(path) as img:
        if channel == "rgb":
            picture = img.convert("RGB")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            picture = Image.new("RGBA", img.size)
            picture.putalpha(alpha)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return web.Response(body=out.getvalue(), content_type="image/png", headers=disposition)


def locate(folders: Folders, query: Mapping[str, str]) -> Path | int:
    """The file a ``/view`` query names, or the HTTP status ComfyUI answers instead."""
    if "filename" not in query:
        return 404
    filename, tagged = folders.annotated(query["filename"])
    if not filename or filename[0] == "/" or ".." in filename:
        return 400
    base = tagged or folders.by_type(query.get("type", "output"))
    if base is None:
        return 400
    if "subfolder" in query:
        folder = Path(os.path.abspath(os.path.join(base, query["subfolder"])))
        if not _inside(base, folder):
            return 403
        base = folder
    path = base / os.path.basename(filename)
    return path if path.is_file() else 404


def store_upload(
    base: Path, subfolder: str, filename: str, data: bytes, overwrite: bool
) -> str | None:
    """Save an upload like ComfyUI; the stored name, or None if it would escape ``base``.

    Same name and same bytes is a duplicate (nothing written, same name back);
    same name and other bytes gets ``"name (1).ext"`` unless ``overwrite``.
    """
    folder = Path(os.path.join(base, os.path.normpath(subfolder)))
    target = Path(os.path.abspath(folder / filename))
    if not _inside(base, target):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        stem, ext = os.path.splitext(filename)
        index = 1
        digest = hashlib.sha256(data).digest()
        while target.exists():
            if hashlib.sha256(target.read_bytes()).digest() == digest:
                return filename
            filename = f"{stem} ({index}){ext}"
            target = folder / filename
            index += 1
    target.write_bytes(data)
    return filename


def routes(services: Services) -> list[web.RouteDef]:
    folders = services.folders

    async def view(request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        found = await asyncio.to_thread(locate, folders, query)
        if isinstance(found, int):
            return web.Response(status=found)
        answer = await asyncio.to_thread(_reencoded, found, query, found.name)
        if answer is not None:
            return answer
        headers = {
            "Content-Disposition": f'filename="{found.name}"',
            "Content-Type": content_type_for(found.name),
        }
        return web.FileResponse(found, headers=headers)

    async def upload_image(request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        upload_type = str(post.get("type") or "input")
        base = folders.by_type(upload_type)
        if base is None:
            raise ValueError(f"unknown upload type {upload_type!r}")  # ComfyUI answers 500 too
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        overwrite = str(post.get("overwrite")) in ("true", "1")
        data = image.file.read()
        name = await asyncio.to_thread(
            store_upload, base, subfolder, image.filename, data, overwrite
        )
        if name is None:
            return web.Response(status=400)
        return web.json_response({"name": name, "subfolder": subfolder, "type": upload_type})

    return [web.get("/view", view), web.post("/upload/image", upload_image)]
