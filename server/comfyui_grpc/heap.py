"""Short garbage-collector pauses for a long-running server process.

A started gateway holds about 100,000 long-lived objects (imported modules,
botocore's service models, the gRPC server). A full collection walks every
one of them while the event loop waits: on 2 cores that was a 40-120 ms
stall in the middle of relaying progress to a thousand streams. Freezing
them once start-up is done moves them out of the collector's sight; they
were never going to be freed anyway.

Relaying also keeps thousands of objects briefly alive (a waiter per open
stream, messages on their way out). With CPython's default thresholds
(700, 10, 10) young collections run so often that many of them are caught
in flight and promoted, which in turn triggers full collections. Larger
thresholds let them die young; reference counting still frees everything
that is not part of a cycle at once, so memory barely moves.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 20, 20)
"""Allocations before a young collection, and young (middle) collections before
the next older one; measured with ``bench`` (progress relay, 1000 streams)."""


def settle_after_start() -> None:
    """Collects start-up garbage once, freezes what survives, raises the thresholds.

    Only for a process that runs one gateway to the end (``serve``, ``dev``):
    frozen objects are never collected, so a test process that starts many
    gateways must not call it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
