"""The server process settles its heap after start-up (in a child: freezing is for good)."""

from __future__ import annotations

import json
import subprocess
import sys

from comfyui_grpc import heap

PROBE = """
import gc, json
import comfyui_grpc.app
from comfyui_grpc import heap
garbage = []
garbage.append(garbage)  # a cycle only the collector can free
del garbage
before = gc.get_freeze_count()
heap.settle_after_start()
print(json.dumps({"before": before, "after": gc.get_freeze_count(),
                  "thresholds": gc.get_threshold(), "unfrozen": len(gc.get_objects())}))
"""


def test_start_up_objects_are_frozen_and_thresholds_raised() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(out.stdout)
    assert report["before"] == 0
    # The imported gateway alone is tens of thousands of objects, all out of the collector's way.
    assert report["after"] > 20_000
    assert report["unfrozen"] < 1_000
    assert tuple(report["thresholds"]) == heap.THRESHOLDS
