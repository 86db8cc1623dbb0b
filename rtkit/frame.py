"""A published message, encoded once and shared by every local subscriber that receives it."""

from __future__ import annotations

from typing import Any

from rtkit.codec import WireFormat, json_to_msgpack

__all__ = ["Frame"]


class Frame:
    """One message on its way to many sockets.

    The hub builds one ``Frame`` per published message in each process; each outbox queues the
    same ready-made ASGI ``websocket.send`` event, so a message costs one encode however many
    sockets receive it. The MessagePack form is built only if a MessagePack connection asks.

    Args:
        payload: the message as JSON bytes.
    """

    __slots__ = ("_binary_event", "payload", "size", "text_event")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.size = len(payload)
        """Bytes of the JSON payload: what an outbox charges against its bound."""
        self.text_event: dict[str, Any] = {"type": "websocket.send", "text": payload.decode()}
        """The ASGI send event of the JSON form (almost every socket's), read once per member."""
        self._binary_event: dict[str, Any] | None = None

    def event(self, wire: WireFormat) -> dict[str, Any]:
        """The ASGI send event carrying this frame in ``wire`` format (built once, then shared)."""
        if wire == "json":
            return self.text_event
        event = self._binary_event
        if event is None:
            event = self._binary_event = {
                "type": "websocket.send",
                "bytes": json_to_msgpack(self.payload),
            }
        return event
