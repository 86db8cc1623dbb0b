"""Helpers for the tests that run a real uvicorn server and real WebSocket clients."""

from __future__ import annotations

import json
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection

TIMEOUT = 10.0


async def recv_json(ws: ClientConnection) -> Any:
    """The next frame of ``ws`` decoded from JSON, failing after ``TIMEOUT`` seconds."""
    with anyio.fail_after(TIMEOUT):
        return json.loads(await ws.recv())


async def recv_until(ws: ClientConnection, kind: str) -> list[Any]:
    """Frames up to and including the first of type ``kind``."""
    frames: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        while True:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            if frame.get("type") == kind:
                return frames


async def send_json(ws: ClientConnection, value: Any) -> None:
    """Send ``value`` as one JSON text frame."""
    await ws.send(json.dumps(value))
