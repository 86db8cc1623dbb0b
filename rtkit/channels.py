"""The hub channel names the ready handlers use, so application code can reach them too."""

from __future__ import annotations

__all__ = ["room_channel", "room_group", "topic_channel"]


def topic_channel(topic: str) -> str:
    """The hub channel of a ``TopicEndpoint`` topic."""
    return f"topic:{topic}"


def room_channel(room: str) -> str:
    """The hub channel of a ``ChatEndpoint`` room."""
    return f"room:{room}"


def room_group(room: str) -> str:
    """The presence group of a ``ChatEndpoint`` room."""
    return f"room:{room}"
