"""Core image and model nodes: instant stand-ins that only track sizes and seeds.

Model loading and text encoding take no time (there are no weights); only the
sampler spends time, one step duration per step, reporting progress like
ComfyUI's KSampler does.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any

from PIL import Image

from ..files import Folders
from .base import NodeContext, NodeDef, NodeOutput, Preview
from .encoders import jpeg_preview
from .values import Handle, Images, Latent, Picture, derive_seed


async def empty_image(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    color = int(inputs["color"])
    batch = int(inputs["batch_size"])
    pictures = tuple(Picture(seed=color, variant=i) for i in range(batch))
    return NodeOutput((Images(int(inputs["width"]), int(inputs["height"]), pictures),))


async def image_invert(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    image: Images = inputs["image"]
    pictures = tuple(Picture(derive_seed(p.seed, "invert"), p.variant) for p in image.pictures)
    return NodeOutput((Images(image.width, image.height, pictures),))


async def image_batch(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    first: Images = inputs["image1"]
    second: Images = inputs["image2"]
    # Like ComfyUI, the second batch is scaled to the first one's size.
    return NodeOutput((Images(first.width, first.height, first.pictures + second.pictures),))


def _file_digest(folders: Folders, inputs: Mapping[str, Any]) -> str:
    path = folders.input_file(str(inputs["image"]))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else ""


def _image_exists(folders: Folders, inputs: Mapping[str, Any]) -> bool | str:
    name = str(inputs["image"])
    return True if folders.input_file(name) else f"Invalid image file: {name}"


async def load_image(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    path = ctx.folders.input_file(str(inputs["image"]))
    if path is None:
        raise FileNotFoundError(f"Invalid image file: {inputs['image']}")
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    images = Images(width, height, (Picture(seed),))
    return NodeOutput((images, Handle("MASK", path.name)))


async def get_image_size(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    image: Images = inputs["image"]
    ctx.send_text(f"width: {image.width}, height: {image.height}\n batch size: {image.count}")
    return NodeOutput((image.width, image.height, image.count))


async def preview_any(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    source = inputs.get("source")
    if isinstance(source, str):
        text = source
    elif isinstance(source, (int, float, bool)):
        text = str(source)
    elif source is None:
        text = ""
    else:
        text = repr(source)
    return NodeOutput((), {"text": [text]})


async def checkpoint_loader(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    name = str(inputs["ckpt_name"])
    return NodeOutput((Handle("MODEL", name), Handle("CLIP", name), Handle("VAE", name)))


async def clip_text_encode(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    return NodeOutput((Handle("CONDITIONING", str(inputs["text"])[:40]),))


async def empty_latent(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    latent = Latent(int(inputs["width"]), int(inputs["height"]), int(inputs["batch_size"]), seed=0)
    return NodeOutput((latent,))


async def ksampler(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    latent: Latent = inputs["latent_image"]
    steps = int(inputs["steps"])
    for step in range(steps):
        await ctx.sleep(ctx.step_seconds())
        preview = None
        if ctx.latent_previews():  # latent2rgb-style: a JPEG at latent size
            shade = int(255 * (step + 1) / steps)
            image = jpeg_preview(shade, shade // 2, 255 - shade, *_preview_size(latent))
            preview = Preview("JPEG", image)
        await ctx.progress(step + 1, steps, preview)
    seed = int(inputs["seed"])
    if latent.seed:  # image-to-image: the result depends on the encoded image too
        seed = derive_seed(latent.seed, str(seed))
    return NodeOutput((Latent(latent.width, latent.height, latent.batch, seed),))


def _preview_size(latent: Latent) -> tuple[int, int]:
    """ComfyUI's latent previews are latent-sized (1/8), at most 512 a side."""
    return (max(8, min(512, latent.width // 8)), max(8, min(512, latent.height // 8)))


async def vae_decode(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    latent: Latent = inputs["samples"]
    pictures = tuple(Picture(latent.seed, i) for i in range(latent.batch))
    return NodeOutput((Images(latent.width, latent.height, pictures),))


async def vae_encode(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    image: Images = inputs["pixels"]
    # Like ComfyUI, the sides are cut down to multiples of 8 when encoding.
    seed = derive_seed(image.pictures[0].seed, "encode") if image.pictures else 1
    return NodeOutput((Latent(image.width // 8 * 8, image.height // 8 * 8, image.count, seed),))


async def lora_loader(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    model: Handle = inputs["model"]
    clip: Handle = inputs["clip"]
    lora = str(inputs["lora_name"])
    patched = (Handle("MODEL", f"{model.name}+{lora}"), Handle("CLIP", f"{clip.name}+{lora}"))
    return NodeOutput(patched)


async def image_scale(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    image: Images = inputs["image"]
    width, height = int(inputs["width"]), int(inputs["height"])
    # ComfyUI: a 0 side keeps the aspect ratio; both 0 leave the image as it is.
    if width == 0 and height == 0:
        return NodeOutput((image,))
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    return NodeOutput((Images(width, height, image.pictures),))


DEFINITIONS = (
    NodeDef("EmptyImage", empty_image),
    NodeDef("ImageInvert", image_invert),
    NodeDef("ImageBatch", image_batch),
    NodeDef(
        "LoadImage",
        load_image,
        is_changed=_file_digest,
        custom_validation=_image_exists,
        validated_inputs=("image",),
        dynamic_combos={"image": "input"},
    ),
    NodeDef("ImageScale", image_scale),
    NodeDef("GetImageSize", get_image_size),
    NodeDef("PreviewAny", preview_any),
    NodeDef(
        "CheckpointLoaderSimple", checkpoint_loader, dynamic_combos={"ckpt_name": "checkpoints"}
    ),
    NodeDef("CLIPTextEncode", clip_text_encode),
    NodeDef("EmptyLatentImage", empty_latent),
    NodeDef("KSampler", ksampler),
    NodeDef("VAEDecode", vae_decode),
    NodeDef("VAEEncode", vae_encode),
    NodeDef("LoraLoader", lora_loader, dynamic_combos={"lora_name": "loras"}),
)
