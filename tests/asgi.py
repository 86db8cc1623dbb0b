"""A scripted ASGI peer, for driving an endpoint without any server in between."""

from __future__ import annotations

from typing import Any

import anyio

from rtkit._types import Message, Receive


def websocket_scope(path: str = "/") -> dict[str, Any]:
    """The scope of a plain WebSocket handshake on ``path``."""
    return {"type": "websocket", "path": path, "headers": [], "query_string": b"", "subprotocols": []}


def scripted_receive(*texts: str) -> Receive:
    """A ``receive`` that connects, delivers ``texts`` as text frames, then waits forever."""
    incoming: list[Message] = [{"type": "websocket.connect"}]
    incoming += [{"type": "websocket.receive", "text": text} for text in texts]

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive
