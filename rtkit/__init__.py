"""rtkit: typed, bounded, observable WebSocket endpoints for Starlette and FastAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtkit.auth import Authenticator, JWTAuthenticator, Principal
from rtkit.backends.base import Backend, BackendHealth
from rtkit.backends.memory import MemoryBackend
from rtkit.channels import room_channel, topic_channel
from rtkit.codec import MSGPACK_SUBPROTOCOL, WireFormat
from rtkit.endpoint import Action, RealtimeEndpoint
from rtkit.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    HandshakeRefusedError,
    NoMessagePackFormError,
    NotStartedError,
    RtkitError,
)
from rtkit.frame import Frame
from rtkit.handlers import ChatEndpoint, EchoEndpoint, TopicEndpoint
from rtkit.hub import Hub
from rtkit.limits import Limits, OverflowPolicy
from rtkit.metrics import Metrics
from rtkit.routing import RealtimeRouter

if TYPE_CHECKING:
    from rtkit.backends.redis import RedisBackend as RedisBackend

__version__ = "0.1.0"

__all__ = [
    "MSGPACK_SUBPROTOCOL",
    "Action",
    "Authenticator",
    "Backend",
    "BackendError",
    "BackendHealth",
    "BackendUnavailableError",
    "ChatEndpoint",
    "ConfigurationError",
    "EchoEndpoint",
    "Frame",
    "HandshakeRefusedError",
    "Hub",
    "JWTAuthenticator",
    "Limits",
    "MemoryBackend",
    "Metrics",
    "NoMessagePackFormError",
    "NotStartedError",
    "OverflowPolicy",
    "Principal",
    "RealtimeEndpoint",
    "RealtimeRouter",
    "RtkitError",
    "TopicEndpoint",
    "WireFormat",
    "__version__",
    "room_channel",
    "topic_channel",
]


def __getattr__(name: str) -> Any:
    # RedisBackend loads on first use, so that `import rtkit` never needs the redis extra. It
    # is left out of __all__ for the same reason: `from rtkit import *` would load it.
    if name == "RedisBackend":
        from rtkit.backends import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
