"""``EchoEndpoint``: every frame goes back as it came."""

from __future__ import annotations

from typing import ClassVar

from starlette.websockets import WebSocket

from rtkit.endpoint import RealtimeEndpoint

__all__ = ["EchoEndpoint"]


class EchoEndpoint(RealtimeEndpoint):
    """Sends each frame back unchanged: text as the same text, binary as the same bytes."""

    inbound = None
    allow_msgpack: ClassVar[bool] = False

    async def on_receive(self, websocket: WebSocket, data: str | bytes) -> None:
        """Queue the frame back to the sender."""
        self.queue_raw(data)
