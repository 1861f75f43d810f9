"""A ComfyUI simulator that speaks ComfyUI 0.3.64's real HTTP + WebSocket protocol.

For tests, demos and client development without a GPU or model weights::

    from comfyui_grpc.simulator import Simulator, Faults

    sim = Simulator(faults=Faults(http_latency_seconds=0.1))
    await sim.start()          # sim.url == "http://127.0.0.1:<port>"
    ...
    await sim.stop()

Run it alone with ``python -m comfyui_grpc.simulator --port 8188``.
"""

from .faults import Faults
from .server import DEFAULT_CHECKPOINTS, DEFAULT_MOTION_MODULES, Simulator

__all__ = ["DEFAULT_CHECKPOINTS", "DEFAULT_MOTION_MODULES", "Faults", "Simulator"]
