"""Backends move opaque bytes between the hubs of one or many processes.

``MemoryBackend`` (the default) serves one process. ``RedisBackend`` (the ``rtkit[redis]`` extra)
serves many processes and machines; it is imported lazily so that ``import rtkit`` never needs
redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtkit.backends.base import Backend, BackendHealth, Receiver
from rtkit.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from rtkit.backends.redis import RedisBackend as RedisBackend

# RedisBackend (loaded on first use, below) is not in __all__: `from rtkit.backends import *`
# must not need the redis extra.
__all__ = ["Backend", "BackendHealth", "MemoryBackend", "Receiver"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a missing redis package then fails with the command to fix it.
    if name == "RedisBackend":
        from rtkit.backends.redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
