"""Garbage collection around CUDA-graph captures.

A CUDA graph left in a reference cycle (a released runner, say) is destroyed whenever Python's
collector runs; if that happens while another graph is being captured, the destruction is an
operation the capture forbids, and the capture fails ("operation not permitted when stream is
capturing": seen on the H200, where it turned off a kernel check for a whole process). So the
collector stays off until the last capture in progress (a background warm-up may capture beside
the main thread) has ended. No collection on entry: one costs ~0.25 s with torch loaded, and
``runtime.release`` already collects where graphs are let go.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_LOCK = threading.Lock()
_state = {"captures": 0, "was_on": True}


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """No automatic collection until the block (and any other running in another thread) ends;
    the collector's previous setting comes back after the last one."""
    with _LOCK:
        if _state["captures"] == 0:
            _state["was_on"] = gc.isenabled()
            gc.disable()
        _state["captures"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _state["captures"] -= 1
            if _state["captures"] == 0 and _state["was_on"]:
                gc.enable()
