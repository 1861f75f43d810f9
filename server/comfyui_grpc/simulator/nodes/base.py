"""What a simulated node is: its behaviour plus the hooks the executor gives it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..files import Folders


@dataclass(frozen=True)
class Preview:
    """An image a node passes to its progress bar (sent as a binary preview frame)."""

    image_format: str  # "JPEG" or "PNG"
    data: bytes


@dataclass
class NodeOutput:
    """A node's outputs (by output index) and its UI output (``executed.output``)."""

    values: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class NodeContext(Protocol):
    """Services the executor offers a running node."""

    prompt_id: str
    node_id: str
    folders: Folders

    def step_seconds(self) -> float:
        """Duration of one KSampler step / VHS frame."""
        ...

    def time_scale(self) -> float:
        """Multiplier for durations a node is given explicitly (TestSlowProgress)."""
        ...

    def latent_previews(self) -> bool:
        """Whether samplers send a preview per step (a ``--preview-method`` other than none)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep, raising the interrupt exception as soon as /interrupt arrives."""
        ...

    async def progress(
        self, value: int | float, total: int | float, preview: Preview | None = None
    ) -> None:
        """Report progress like ComfyUI's ProgressBar (checks the interrupt flag first)."""
        ...

    def send_text(self, text: str) -> None:
        """Broadcast a binary TEXT frame for this node."""
        ...


RunFn = Callable[[NodeContext, Mapping[str, Any]], Awaitable[NodeOutput]]


@dataclass(frozen=True)
class NodeDef:
    """A node class: how it runs, and its optional ComfyUI-style hooks."""

    class_type: str
    run: RunFn
    is_changed: Callable[[Folders, Mapping[str, Any]], object] | None = None
    """Extra cache-key input (LoadImage: the file's hash)."""
    custom_validation: Callable[[Folders, Mapping[str, Any]], bool | str] | None = None
    """Replaces type/range/combo checks for the inputs in ``validated_inputs``."""
    validated_inputs: tuple[str, ...] = ()
    dynamic_combos: Mapping[str, str] = field(default_factory=dict)
    """File combos: input name -> "checkpoints", "motion_modules" or "input"."""
