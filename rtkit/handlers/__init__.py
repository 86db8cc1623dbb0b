"""Ready endpoints to use as they are or to extend: echo, chat rooms, topic pub/sub."""

from __future__ import annotations

from rtkit.handlers.chat import ChatEndpoint
from rtkit.handlers.echo import EchoEndpoint
from rtkit.handlers.topics import TopicEndpoint

__all__ = ["ChatEndpoint", "EchoEndpoint", "TopicEndpoint"]
