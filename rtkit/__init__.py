"""rtkit: typed, bounded, observable WebSocket endpoints for Starlette and FastAPI."""

from __future__ import annotations

from rtkit._outbox import Outbox, OverflowPolicy
from rtkit.backends.base import Backend, BackendHealth
from rtkit.backends.memory import MemoryBackend
from rtkit.channels import room_channel, topic_channel
from rtkit.codec import MSGPACK_SUBPROTOCOL, WireFormat
from rtkit.endpoint import RealtimeEndpoint
from rtkit.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    NotStartedError,
    RtkitError,
)
from rtkit.frame import Frame
from rtkit.handlers import ChatEndpoint, EchoEndpoint, TopicEndpoint
from rtkit.hub import Hub, HubStats
from rtkit.routing import RealtimeRouter

__version__ = "0.1.0"

__all__ = [
    "MSGPACK_SUBPROTOCOL",
    "Backend",
    "BackendError",
    "BackendHealth",
    "BackendUnavailableError",
    "ChatEndpoint",
    "ConfigurationError",
    "EchoEndpoint",
    "Frame",
    "Hub",
    "HubStats",
    "MemoryBackend",
    "NotStartedError",
    "Outbox",
    "OverflowPolicy",
    "RealtimeEndpoint",
    "RealtimeRouter",
    "RtkitError",
    "TopicEndpoint",
    "WireFormat",
    "__version__",
    "room_channel",
    "topic_channel",
]
