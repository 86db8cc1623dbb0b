"""Backends move opaque bytes between the hubs of one or many processes.

``MemoryBackend`` (the default) serves one process. ``RedisBackend`` (the ``rtkit[redis]`` extra)
serves many processes and machines; it is imported lazily so that ``import rtkit`` never needs
redis.
"""

from __future__ import annotations

from rtkit.backends.base import Backend, BackendHealth, Receiver
from rtkit.backends.memory import MemoryBackend

__all__ = ["Backend", "BackendHealth", "MemoryBackend", "Receiver"]
