"""The fleet scheduler: a pure decision core and the executor that runs its actions."""

from .core import Phase, Scheduler

__all__ = ["Phase", "Scheduler"]
