"""Helpers for the tests that run a real uvicorn server and real WebSocket clients."""

from __future__ import annotations

import json
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection

TIMEOUT = 10.0
FAST_PROTOCOL = "rtkit.uvicorn_protocol:FastWebSocketProtocol"
"""rtkit's uvicorn protocol, as uvicorn's ``ws`` option: the live tests run on it too."""


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


class RawClient:
    """A WebSocket client on a bare socket, for what client libraries refuse to do: send
    oversized or malformed frames, or stop reading altogether."""

    def __init__(self, host: str, port: int, path: str, *, receive_buffer: int | None = None) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # a small window fills, and stalls the server, sooner
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((host, port))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def send_frame(self, payload: bytes, *, opcode: int = 0x1) -> None:
        """Send one masked frame (clients must mask), of any size."""
        import os
        import struct

        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def recv_frame(self) -> tuple[int, bytes]:
        """The next frame's opcode and payload (server frames are not masked)."""
        import struct

        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(length)

    def close(self) -> None:
        self.sock.close()


async def frames_until_closed(ws: ClientConnection) -> tuple[list[Any], int | None, str | None]:
    """Every JSON frame until the server closes, with the close code and reason it sent."""
    from websockets.exceptions import ConnectionClosed

    frames: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        try:
            while True:
                frames.append(json.loads(await ws.recv()))
        except ConnectionClosed as closed:
            frame = closed.rcvd
    return frames, (frame.code if frame else None), (frame.reason if frame else None)
