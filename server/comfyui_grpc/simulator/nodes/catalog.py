"""The node catalog: ``/object_info`` data plus each node's behaviour.

Input specs come from ``object_info.json`` (recorded from real ComfyUI 0.3.64
where a transcript has them), so validation and ``/object_info`` agree by
construction. Combos listing files (checkpoints, motion modules, input images)
are filled in per request from the simulator's configuration.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from ..files import Folders
from .base import NodeDef


@cache
def _recorded_specs() -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath("object_info.json").read_text(encoding="utf-8")
    data: dict[str, dict[str, Any]] = json.loads(text)
    return data


class NodeCatalog:
    """All simulated node classes, with the model files they can see."""

    def __init__(
        self,
        definitions: Sequence[NodeDef],
        folders: Folders,
        checkpoints: Sequence[str],
        motion_modules: Sequence[str],
        loras: Sequence[str] = (),
    ) -> None:
        specs = _recorded_specs()
        self._defs = {d.class_type: d for d in definitions}
        missing = set(self._defs) ^ set(specs)
        if missing:
            raise ValueError(f"node definitions and object_info.json disagree on {sorted(missing)}")
        self._order = [name for name in specs if name in self._defs]
        self.folders = folders
        self.checkpoints = sorted(checkpoints)
        self.motion_modules = sorted(motion_modules)
        self.loras = sorted(loras)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._defs

    def definition(self, class_type: str) -> NodeDef:
        return self._defs[class_type]

    def model_files(self, folder: str) -> list[str] | None:
        """Files of a models/ folder as ``/models/{folder}`` lists them (None: unknown)."""
        if folder == "checkpoints":
            return list(self.checkpoints)
        if folder == "animatediff_models":
            return list(self.motion_modules)
        if folder == "loras":
            return list(self.loras)
        if folder in MODEL_FOLDERS:
            return []
        return None

    def _choices(self, source: str) -> list[str]:
        if source == "checkpoints":
            return list(self.checkpoints)
        if source == "motion_modules":
            return list(self.motion_modules)
        if source == "loras":
            return list(self.loras)
        return self.folders.input_files()

    def spec(self, class_type: str) -> dict[str, Any]:
        """The ``/object_info`` entry, with file combos filled in."""
        spec = copy.deepcopy(_recorded_specs()[class_type])
        for name, source in self._defs[class_type].dynamic_combos.items():
            for section in spec["input"].values():
                if name in section:
                    section[name][0] = self._choices(source)
        return spec

    def object_info(self) -> dict[str, Any]:
        return {name: self.spec(name) for name in self._order}

    def custom_check(
        self, class_type: str
    ) -> tuple[tuple[str, ...], Callable[[Mapping[str, Any]], bool | str]] | None:
        definition = self._defs[class_type]
        check = definition.custom_validation
        if check is None:
            return None
        folders = self.folders
        return definition.validated_inputs, lambda inputs: check(folders, inputs)

    def input_types(self, class_type: str) -> Mapping[str, Mapping[str, Any]]:
        inputs: Mapping[str, Mapping[str, Any]] = self.spec(class_type)["input"]
        return inputs

    def return_types(self, class_type: str) -> tuple[Any, ...]:
        return tuple(_recorded_specs()[class_type]["output"])

    def is_output(self, class_type: str) -> bool:
        return bool(_recorded_specs()[class_type]["output_node"])

    def takes_unique_id(self, class_type: str) -> bool:
        """Nodes with a hidden UNIQUE_ID input are cached per node id, as in ComfyUI."""
        hidden = _recorded_specs()[class_type]["input"].get("hidden", {})
        return any(v == "UNIQUE_ID" or v == ["UNIQUE_ID"] for v in hidden.values())


# /models lists these folder names (recorded from the real server).
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders", "animatediff_models", "animatediff_motion_lora",
    "animatediff_video_formats", "VHS_video_formats",
)  # fmt: skip
