"""What a ComfyUI backend can run: its node classes and the choices of their inputs.

Built from ``/object_info``. The file lists of loader inputs (checkpoints,
LoRAs, VAEs, motion modules, upscalers, ControlNets...) are combo inputs
there, so "has the model file" and "accepts the combo value" are one check:
:meth:`Inventory.satisfies` a job's :class:`Needs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..comfyui.validation import is_upload_input

# Combo inputs that name model files, by the folder ComfyUI keeps them in:
# what ListModels-style views group by. Other combos (samplers...) are not models.
MODEL_INPUTS: Mapping[str, str] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "control_net_name": "controlnet",
    "model_name": "models",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "upscale_model": "upscale_models",
    "motion_model_name": "animatediff_models",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
}
_MOTION_LOADERS = ("ADE_", "AnimateDiff")
_UPSCALE_LOADERS = ("UpscaleModelLoader",)


def model_folder(class_type: str, input_name: str) -> str | None:
    """The model folder a loader input picks from, or None for other inputs."""
    folder = MODEL_INPUTS.get(input_name)
    if folder == "models":
        if class_type.startswith(_MOTION_LOADERS):
            return "animatediff_models"
        if class_type in _UPSCALE_LOADERS:
            return "upscale_models"
        return None
    return folder


@dataclass(frozen=True, slots=True)
class Needs:
    """What a graph asks of a backend: node classes and constant string inputs."""

    classes: frozenset[str]
    choices: frozenset[tuple[str, str, str]] = frozenset()
    """(class_type, input name, value) for every constant string input."""


def needs_of(graph: Mapping[str, Any]) -> Needs:
    classes: set[str] = set()
    choices: set[tuple[str, str, str]] = set()
    for node in graph.values():
        if not isinstance(node, Mapping):
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str):
            continue
        classes.add(class_type)
        inputs = node.get("inputs")
        if isinstance(inputs, Mapping):
            for name, value in inputs.items():
                if isinstance(value, str):
                    choices.add((class_type, str(name), value))
    return Needs(frozenset(classes), frozenset(choices))


def _combo_options(spec: Any) -> frozenset[str] | None:
    """The allowed values of a combo input spec, or None when it is not a combo."""
    if not isinstance(spec, list) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return frozenset(str(v) for v in kind)
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        if isinstance(options, list):
            return frozenset(str(v) for v in options)
    return None


@dataclass(frozen=True, slots=True)
class Inventory:
    """A backend's ``/object_info``, indexed for the checks routing makes."""

    object_info: Mapping[str, Any]
    combos: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_object_info(cls, data: Any) -> Inventory:
        """Index ``/object_info``; entries of the wrong shape are left out."""
        info: dict[str, Any] = {}
        combos: dict[tuple[str, str], frozenset[str]] = {}
        if isinstance(data, Mapping):
            for class_type, entry in data.items():
                if not isinstance(entry, Mapping) or not isinstance(entry.get("input"), Mapping):
                    continue
                info[str(class_type)] = entry
                for section in entry["input"].values():
                    if not isinstance(section, Mapping):
                        continue
                    for name, spec in section.items():
                        if is_upload_input(spec):
                            continue  # uploaded files: they change with every upload
                        options = _combo_options(spec)
                        if options is not None:
                            combos[(str(class_type), str(name))] = options
        return cls(object_info=info, combos=combos)

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(self.object_info)

    def satisfies(self, needs: Needs) -> bool:
        info = self.object_info
        if any(c not in info for c in needs.classes):
            return False
        combos = self.combos
        for class_type, name, value in needs.choices:
            options = combos.get((class_type, name))
            if options is not None and value not in options:
                return False
        return True

    def models(self) -> dict[str, frozenset[str]]:
        """Model files by folder, from the loaders' combo inputs."""
        folders: dict[str, set[str]] = {}
        for (class_type, name), options in self.combos.items():
            folder = model_folder(class_type, name)
            if folder is not None:
                folders.setdefault(folder, set()).update(options)
        return {folder: frozenset(files) for folder, files in folders.items()}
