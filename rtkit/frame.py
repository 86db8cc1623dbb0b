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

    __slots__ = ("_binary_event", "_text_event", "payload", "size")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.size = len(payload)
        """Bytes of the JSON payload: what an outbox charges against its bound."""
        self._text_event: dict[str, Any] | None = None
        self._binary_event: dict[str, Any] | None = None

    def event(self, wire: WireFormat) -> dict[str, Any]:
        """The ASGI send event carrying this frame in ``wire`` format (built once, then shared)."""
        if wire == "json":
            event = self._text_event
            if event is None:
                event = self._text_event = {"type": "websocket.send", "text": self.payload.decode()}
            return event
        event = self._binary_event
        if event is None:
            event = self._binary_event = {
                "type": "websocket.send",
                "bytes": json_to_msgpack(self.payload),
            }
        return event
