"""Simulated node classes and the catalog that serves them."""

from __future__ import annotations

from .animation import DEFINITIONS as _ANIMATION
from .base import NodeContext, NodeDef, NodeOutput, Preview
from .catalog import NodeCatalog
from .core import DEFINITIONS as _CORE
from .savers import DEFINITIONS as _SAVERS
from .testing import DEFINITIONS as _TESTING

ALL_NODES: tuple[NodeDef, ...] = _CORE + _SAVERS + _ANIMATION + _TESTING

__all__ = ["ALL_NODES", "NodeCatalog", "NodeContext", "NodeDef", "NodeOutput", "Preview"]
