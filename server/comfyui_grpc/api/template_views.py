"""Templates and model files as the API shows them, from what the fleet has now.

A template's ``runnable`` and its model parameters' choices come from the
connected backends' inventories (``/object_info``), the same data the
scheduler routes by, so what ListTemplates offers is what Generate accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from ..backends.backend import Backend
from ..backends.inventory import Inventory
from ..v1 import generation_service_pb2 as pb
from ..workflows.template_files import Template
from ..workflows.template_library import runnable

_TYPES = {
    "string": pb.PARAMETER_TYPE_STRING,
    "int": pb.PARAMETER_TYPE_INT,
    "float": pb.PARAMETER_TYPE_FLOAT,
    "bool": pb.PARAMETER_TYPE_BOOL,
    "enum": pb.PARAMETER_TYPE_ENUM,
    "seed": pb.PARAMETER_TYPE_SEED,
    "model": pb.PARAMETER_TYPE_MODEL,
    "image": pb.PARAMETER_TYPE_IMAGE,
}


def inventories(backends: Iterable[Backend]) -> dict[str, Inventory]:
    """The known inventories of the connected backends, by backend URL."""
    return {b.url: b.inventory for b in backends if b.healthy and b.inventory is not None}


def model_files(inv: Mapping[str, Inventory]) -> dict[str, dict[str, list[str]]]:
    """folder -> file -> the backends holding it (sorted)."""
    folders: dict[str, dict[str, list[str]]] = {}
    for url in sorted(inv):
        for folder, files in inv[url].models().items():
            for name in files:
                folders.setdefault(folder, {}).setdefault(name, []).append(url)
    return folders


def _value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def template(t: Template, inv: Mapping[str, Inventory]) -> pb.Template:
    can, why = runnable(t, [i.object_info for i in inv.values()])
    files = model_files(inv)
    message = pb.Template(
        name=t.name,
        version=t.version,
        description=t.description,
        outputs=list(t.outputs),
        runnable=can,
        unrunnable_reason=why,
        built_in=t.built_in,
    )
    for p in t.params:
        param = message.parameters.add(
            name=p.name,
            type=_TYPES[p.type],
            description=p.description,
            required=p.required,
            folder=p.folder,
        )
        if p.default is not None:
            param.default_value.CopyFrom(_value(p.default))
        if p.min is not None:
            param.min = p.min
        if p.max is not None:
            param.max = p.max
        if p.type == "enum":
            param.values.extend(p.values)
        elif p.type == "model":
            param.values.extend(sorted(files.get(p.folder, {})))
    return message


def models(inv: Mapping[str, Inventory], folder: str = "") -> pb.ListModelsResponse:
    response = pb.ListModelsResponse()
    for name, files in sorted(model_files(inv).items()):
        if folder and name != folder:
            continue
        entry = response.folders.add(name=name)
        for file_name in sorted(files):
            entry.files.add(name=file_name, backends=files[file_name])
    return response
