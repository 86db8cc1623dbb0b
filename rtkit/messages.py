"""The wire envelopes of rtkit's protocol (v1): msgspec Structs tagged by their ``type`` field.

Every envelope may carry a ``ref`` chosen by the client; a reply to a request repeats the
request's ``ref`` so that clients can match answers to questions. Fields left at their default
(``ref=None`` above all) are not written on the wire.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import msgspec

__all__ = [
    "NO_DATA",
    "ChatInbound",
    "Envelope",
    "ErrorFrame",
    "Event",
    "Gap",
    "Heartbeat",
    "Joined",
    "Left",
    "Message",
    "Publish",
    "Published",
    "Ref",
    "Said",
    "Say",
    "Subscribe",
    "Subscribed",
    "TopicInbound",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
]

Ref: TypeAlias = str | int | None
"""A client's correlation id: echoed back on every reply to the request that carried it."""


class Envelope(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of every envelope: a ``type`` tag (the class's tag) and an optional ``ref``."""

    ref: Ref = None


class ErrorFrame(Envelope, tag="error"):
    """Sent when a request cannot be served; the connection stays open."""

    code: str
    detail: str


class Gap(Envelope, tag="gap"):
    """Server to client: ``missed`` messages (an estimate) of a topic, a room or another
    channel were lost between processes; refetch whatever state depends on them."""

    missed: int
    topic: str | None = None
    room: str | None = None
    channel: str | None = None


class Heartbeat(Envelope, tag="heartbeat"):
    """Either way: a sign of life. The server sends it every ``heartbeat_interval`` when set;
    a client may send it to reset its idle timer without any handler seeing it."""


# -- chat rooms ---------------------------------------------------------------------------


class Say(Envelope, tag="say"):
    """Client to server: post ``text`` to the room the connection is in."""

    text: str


class Said(Envelope, tag="said"):
    """Server to the sender of a ``say`` that carried a ``ref``: the message was posted."""

    room: str


class Welcome(Envelope, tag="welcome"):
    """Server to a client that just joined: who it is and who is in the room."""

    room: str
    user: str
    members: list[str]


class Joined(Envelope, tag="joined"):
    """Server to the other members: ``user`` entered the room."""

    room: str
    user: str


class Left(Envelope, tag="left"):
    """Server to the remaining members: ``user`` left the room."""

    room: str
    user: str


class Message(Envelope, tag="message"):
    """Server to every member: ``user`` said ``text`` at ``ts`` (unix seconds)."""

    room: str
    user: str
    text: str
    ts: float


ChatInbound: TypeAlias = Say
"""What a chat client may send."""


# -- topics (pub/sub) ---------------------------------------------------------------------


class Subscribe(Envelope, tag="subscribe"):
    """Client to server: start receiving the events of ``topic``."""

    topic: str


class Unsubscribe(Envelope, tag="unsubscribe"):
    """Client to server: stop receiving the events of ``topic``."""

    topic: str


NO_DATA: Final = msgspec.Raw(b"null")
"""``Publish.data`` when the client sent none: JSON ``null``."""


class Publish(Envelope, tag="publish"):
    """Client to server: deliver ``data`` to every subscriber of ``topic``.

    ``data`` is kept as the client sent it (``msgspec.Raw``: the undecoded JSON, or MessagePack
    on a MessagePack connection), so forwarding it costs no decode and no re-encode; read it
    with ``msgspec.json.decode(message.data)`` if a handler needs its value.
    """

    topic: str
    data: msgspec.Raw = NO_DATA


class Subscribed(Envelope, tag="subscribed"):
    """Server to client: the subscription to ``topic`` is in place."""

    topic: str


class Unsubscribed(Envelope, tag="unsubscribed"):
    """Server to client: no more events of ``topic`` will follow."""

    topic: str


class Published(Envelope, tag="published"):
    """Server to a publisher that sent a ``ref``: the event was handed to the hub."""

    topic: str


class Event(Envelope, tag="event"):
    """Server to every subscriber of ``topic``: one published event."""

    topic: str
    data: Any


TopicInbound: TypeAlias = Subscribe | Unsubscribe | Publish
"""What a topic client may send."""
