"""A published message, encoded once and shared by every local subscriber that receives it."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from rtkit.codec import WireFormat, json_to_msgpack
from rtkit.errors import NoMessagePackFormError

__all__ = ["Frame"]

logger = logging.getLogger("rtkit")


class Frame:
    """One message on its way to many sockets.

    The hub builds one ``Frame`` per published message in each process; each outbox queues the
    same ready-made ASGI ``websocket.send`` event, so a message costs one encode however many
    sockets receive it. The MessagePack form is built only if a MessagePack connection asks.

    Args:
        payload: the message as JSON bytes.
    """

    __slots__ = ("_binary_event", "_no_binary_form", "payload", "size", "text_event")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.size = len(payload)
        """Bytes of the JSON payload: what an outbox charges against its bound."""
        self.text_event: dict[str, Any] = {"type": "websocket.send", "text": payload.decode()}
        """The ASGI send event of the JSON form (almost every socket's), read once per member."""
        self._binary_event: dict[str, Any] | None = None
        self._no_binary_form = False

    def event(self, wire: WireFormat) -> dict[str, Any]:
        """The ASGI send event carrying this frame in ``wire`` format (built once, then shared).

        Raises:
            NoMessagePackFormError: ``wire`` is MessagePack and the JSON holds a value it cannot
                (an integer beyond 64 bits, say). The first time is logged as a warning.
        """
        if wire == "json":
            return self.text_event
        event = self._binary_event
        if event is None:
            if self._no_binary_form:
                raise NoMessagePackFormError("this message has no MessagePack form")
            try:
                event = self._binary_event = {
                    "type": "websocket.send",
                    "bytes": json_to_msgpack(self.payload),
                }
            except (msgspec.MsgspecError, OverflowError, RecursionError) as exc:
                self._no_binary_form = True
                logger.warning("a message has no MessagePack form; MessagePack connections miss it: %s", exc)
                raise NoMessagePackFormError(f"this message has no MessagePack form: {exc}") from exc
        return event
