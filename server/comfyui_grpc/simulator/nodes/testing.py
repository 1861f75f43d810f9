"""The two test nodes the transcripts were recorded with (see test_nodes.py there)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import NodeContext, NodeDef, NodeOutput, Preview
from .encoders import jpeg_preview


async def slow_progress(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    """Pass the image through after ``steps`` interruptible sleeps, one progress each.

    ``seconds_per_step`` is honoured exactly, times the simulator's time_scale.
    """
    steps = int(inputs["steps"])
    seconds = float(inputs["seconds_per_step"])
    send_preview = bool(inputs.get("send_preview", False))
    for step in range(steps):
        await ctx.sleep(seconds * ctx.time_scale())  # read each step: changeable at run time
        preview = None
        if send_preview:
            shade = int(255 * (step + 1) / steps)
            preview = Preview("JPEG", jpeg_preview(shade, 0, 255 - shade))
        await ctx.progress(step + 1, steps, preview)
    return NodeOutput((inputs["image"],))


async def fail(ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeOutput:
    raise RuntimeError(str(inputs["message"]))


DEFINITIONS = (
    NodeDef("TestSlowProgress", slow_progress),
    NodeDef("TestFail", fail),
)
