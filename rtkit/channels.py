"""The hub channel names the ready handlers use, so application code can reach them too.

A handler class may set a ``namespace``: its topics or rooms are then channels of their own,
which no class of another namespace reaches, whatever the names. Two routes that authorize
differently must not share one: a client of the laxer route would reach the stricter one's
subscribers (see ``TopicEndpoint.namespace``).
"""

from __future__ import annotations

import re

from rtkit.errors import ConfigurationError

__all__ = ["check_namespace", "room_channel", "room_group", "topic_channel"]

# No ':' (the separator before the name) and nothing a name could start a prefix with: the
# channels of two namespaces, or of one and none, can never be equal.
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is valid ("" for none, or 1 to 64 of ``A-Z a-z 0-9 _ . -``).

    Raises:
        ConfigurationError: it is not.
    """
    if namespace and _NAMESPACE.fullmatch(namespace) is None:
        raise ConfigurationError(
            f"invalid namespace {namespace!r}: use 1 to 64 of A-Z a-z 0-9 _ . - (or '' for none)"
        )
    return namespace


def topic_channel(topic: str, namespace: str = "") -> str:
    """The hub channel of a ``TopicEndpoint`` topic, in ``namespace`` (its class's)."""
    return f"topic#{namespace}:{topic}" if namespace else f"topic:{topic}"


def room_channel(room: str, namespace: str = "") -> str:
    """The hub channel of a ``ChatEndpoint`` room, in ``namespace`` (its class's)."""
    return f"room#{namespace}:{room}" if namespace else f"room:{room}"


def room_group(room: str, namespace: str = "") -> str:
    """The presence group of a ``ChatEndpoint`` room, in ``namespace`` (its class's)."""
    return room_channel(room, namespace)
