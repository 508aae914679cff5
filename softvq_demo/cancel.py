"""Cooperative cancellation for long loops (sampler steps, batches, OCR, UMAP, dataset profiles).

    from softvq_demo.cancel import raise_if_cancelled
    for step in range(steps):
        raise_if_cancelled()       # cheap: a no-op unless a caller registered a check
        ...

The library knows nothing of who cancels: the app registers a check (``ui.guard`` asks whether the
gradio event running in this thread was cancelled by its client). A thread cannot be killed from
outside in Python, so a cancelled request only stops when its own loop looks; without this, a
cancelled request kept its CPU for minutes while its concurrency slot was already given away.
"""
from __future__ import annotations

from typing import Callable

_checks: list[Callable[[], bool]] = []


class Cancelled(ValueError):
    """The request that runs this code was cancelled; its result is not wanted any more. A
    ValueError, so the app's handlers answer it as a short message, not as a crash."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


def register(check: Callable[[], bool]) -> None:
    """Add a check (called from worker threads, must be fast and never raise)."""
    if check not in _checks:
        _checks.append(check)


def unregister(check: Callable[[], bool]) -> None:
    if check in _checks:
        _checks.remove(check)


def is_cancelled() -> bool:
    return any(check() for check in _checks)


def raise_if_cancelled() -> None:
    """Raise :class:`Cancelled` if the current request was cancelled (no-op outside the app)."""
    for check in _checks:
        if check():
            raise Cancelled()
