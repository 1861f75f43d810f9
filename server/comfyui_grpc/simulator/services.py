"""The parts of a running simulator that HTTP handlers need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .executor import Executor
from .faults import Faults
from .files import Folders
from .nodes import NodeCatalog
from .queue import PromptQueue
from .ws import SocketHub


@dataclass
class Services:
    queue: PromptQueue
    hub: SocketHub
    executor: Executor
    catalog: NodeCatalog
    folders: Folders
    get_faults: Callable[[], Faults]
    submitted_prompt_ids: list[str]
    submitted_client_ids: list[str]
    deleted_prompt_ids: list[str]
