"""The process-wide Manager: created on first use, shut down at exit.

One small module both the Python API (``kiteohlc_lab.api``) and the notebook layer ask, so neither
imports the other to find it, and nothing below them imports either.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

__all__ = ["manager", "reset"]

_manager: Any = None  # the Manager, once created
_lock = threading.Lock()


def manager() -> Any:
    """The process-wide ``runtime.Manager`` (created on first use, shut down at exit)."""
    global _manager
    with _lock:
        if _manager is None:
            from .runtime import Manager

            _manager = Manager()
            atexit.register(_shutdown)
        return _manager


def _shutdown() -> None:
    m = _manager
    if m is not None:
        m.shutdown()


def reset() -> None:
    """Shut the current Manager down and forget it (tests, ``%unload_ext``)."""
    global _manager
    with _lock:
        m, _manager = _manager, None
    if m is not None:
        m.shutdown()
