"""The templates a gateway serves: built-ins plus a directory, re-read on change.

Re-reading swaps one immutable mapping for another, so a job being built
keeps the template it looked up, and a running job never looks again (its
graph and the version it used are fixed in its spec). A file whose new
contents are broken keeps serving its last good version, with the reason
logged; other files are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import NotFound
from .builtin_templates import BUILTINS
from .template_files import Template, TemplateError, is_template_file, load_file

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]

_COMPATIBLE = {
    "INT": ("int", "seed"),
    "FLOAT": ("float", "int"),
    "STRING": ("string", "enum"),
    "BOOLEAN": ("bool",),
}
_COMBO_TYPES = ("string", "enum", "model", "image")


class TemplateLibrary:
    def __init__(self, directory: str = "", builtins: Sequence[Template] = BUILTINS) -> None:
        self.directory = Path(directory) if directory else None
        self._builtins = tuple(builtins)
        self._by_file: dict[str, Template] = {}
        self._index: dict[str, dict[int, Template]] = {}
        self._signature: Signature = ()
        self.reloads = 0
        """How many times the directory was read (tests and operators wait on it)."""
        self._reloaded: asyncio.Event | None = None
        self._rebuild()

    # -- reading ---------------------------------------------------------------

    def signature(self) -> Signature:
        """Names, sizes and modification times of the directory's files."""
        if self.directory is None:
            return ()
        entries = []
        try:
            paths = sorted(self.directory.iterdir())
        except OSError:
            return ()
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if path.is_file():
                entries.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def reload(self) -> None:
        """Read the directory again; log and skip (or keep the old version of) broken files."""
        try:
            self._reload()
        finally:
            self.reloads += 1
            if self._reloaded is not None:
                self._reloaded.set()
                self._reloaded = None

    async def reloaded_past(self, count: int) -> None:
        """Return once the directory has been read more than ``count`` times."""
        while self.reloads <= count:
            if self._reloaded is None:
                self._reloaded = asyncio.Event()
            await self._reloaded.wait()

    def _reload(self) -> None:
        self._signature = self.signature()
        if self.directory is None:
            return
        try:
            paths = sorted(p for p in self.directory.iterdir() if is_template_file(p))
        except OSError as exc:
            log.warning("cannot read the templates directory %s: %s", self.directory, exc)
            return
        fresh: dict[str, Template] = {}
        for path in paths:
            key = str(path)
            try:
                fresh[key] = load_file(path)
            except TemplateError as exc:
                previous = self._by_file.get(key)
                if previous is not None:
                    log.warning(
                        "template file %s is broken, still serving %s version %d: %s",
                        path,
                        previous.name,
                        previous.version,
                        exc,
                    )
                    fresh[key] = previous
                else:
                    log.warning("template file %s skipped: %s", path, exc)
        self._by_file = fresh
        self._rebuild()
        log.info(
            "templates loaded: %s",
            ", ".join(f"{t.name} v{t.version}" for t in self.all(all_versions=True)) or "none",
        )

    def _rebuild(self) -> None:
        index: dict[str, dict[int, Template]] = {}
        for template in self._builtins:
            index.setdefault(template.name, {})[template.version] = template
        builtin_names = {t.name for t in self._builtins}
        for path, template in self._by_file.items():
            if template.name in builtin_names:
                log.warning(
                    "template file %s skipped: %r is a built-in template's name",
                    path,
                    template.name,
                )
                continue
            versions = index.setdefault(template.name, {})
            other = versions.get(template.version)
            if other is not None:
                log.warning(
                    "template file %s skipped: %s version %d is already in %s",
                    path,
                    template.name,
                    template.version,
                    other.source,
                )
                continue
            versions[template.version] = template
        self._index = index

    async def watch(self, interval: float) -> None:
        """Re-read the directory whenever its files change (checked every ``interval``)."""
        while True:
            await asyncio.sleep(interval)
            if self.signature() != self._signature:
                self.reload()

    # -- lookups ---------------------------------------------------------------

    def get(self, name: str, version: int = 0) -> Template:
        versions = self._index.get(name)
        if not versions:
            known = ", ".join(sorted(self._index))
            raise NotFound(
                f"no template named {name[:80]!r}; ListTemplates shows them ({known})",
                reason="TEMPLATE_NOT_FOUND",
            )
        if version == 0:
            return versions[max(versions)]
        template = versions.get(version)
        if template is None:
            raise NotFound(
                f"template {name!r} has no version {version}; loaded: "
                f"{', '.join(map(str, sorted(versions)))}",
                reason="TEMPLATE_NOT_FOUND",
            )
        return template

    def all(self, *, all_versions: bool = False) -> list[Template]:
        """By name; newest version first."""
        found: list[Template] = []
        for name in sorted(self._index):
            versions = sorted(self._index[name].values(), key=lambda t: -t.version)
            found.extend(versions if all_versions else versions[:1])
        return found


def _input_spec(entry: Mapping[str, Any], name: str) -> Any:
    sections = entry.get("input", {})
    for section in ("required", "optional"):
        inputs = sections.get(section, {}) if isinstance(sections, Mapping) else {}
        if isinstance(inputs, Mapping) and name in inputs:
            return inputs[name]
    return None


def problem_on(template: Template, object_info: Mapping[str, Any]) -> str | None:
    """Why a backend with this ``/object_info`` cannot run ``template`` (None: it can).

    Checks node classes, and that every bound input exists with a type its
    parameter can fill; model files are the caller's choice, checked per job.
    """
    for node_id, node in template.workflow.items():
        class_type = node.get("class_type")
        if class_type not in object_info:
            return f"node {node_id} needs the node class {class_type}, which is not installed"
    for param in template.params:
        for node_id, name in param.binds:
            class_type = template.workflow[node_id]["class_type"]
            spec = _input_spec(object_info[class_type], name)
            if not isinstance(spec, list) or not spec:
                return f"{class_type} (node {node_id}) has no input {name!r}"
            kind = spec[0]
            if isinstance(kind, list) or kind == "COMBO":
                fits = param.type in _COMBO_TYPES
            else:
                fits = param.type in _COMPATIBLE.get(str(kind), ())
            if not fits:
                shown = "a list of choices" if isinstance(kind, list) else str(kind)
                return (
                    f"parameter {param.name} ({param.type}) is bound to {class_type}.{name}, "
                    f"which takes {shown}"
                )
    return None


def runnable(template: Template, infos: Iterable[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether one of these backends can run it, and if none can, why (the first reason)."""
    reason = "no backend is connected"
    for info in infos:
        why = problem_on(template, info)
        if why is None:
            return True, ""
        reason = why
    return False, reason
