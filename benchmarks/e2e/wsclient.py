"""A minimal WebSocket client on a bare ``asyncio.Protocol``, for load generation only.

Why not a library: a load client that spends more per frame than the server would measure
itself. This one does the least RFC 6455 allows a client to do: a plain handshake, frames
masked with an all-zero key (legal, and it makes masking a no-op; fine on loopback, never for
a real client), and a parser for the server's unmasked frames that calls back per frame with
no task or future per message. It answers pings and close frames; it does not validate UTF-8
or reassemble fragments (uvicorn does not fragment the small frames used here).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from typing import cast

__all__ = ["FrameCallback", "WsClient", "connect"]

FrameCallback = Callable[[bytes], None]

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_ZERO_MASK = b"\x00\x00\x00\x00"


def _header(opcode: int, length: int) -> bytes:
    first = 0x80 | opcode  # FIN: every frame is whole
    if length < 126:
        return bytes((first, 0x80 | length)) + _ZERO_MASK
    if length < 1 << 16:
        return bytes((first, 0x80 | 126)) + length.to_bytes(2, "big") + _ZERO_MASK
    return bytes((first, 0x80 | 127)) + length.to_bytes(8, "big") + _ZERO_MASK


class WsClient(asyncio.Protocol):
    """One client connection; ``on_frame`` gets each text or binary payload as ``bytes``.

    Args:
        host: the server's host, for the ``Host`` header.
        path: the request target, e.g. ``/ws/echo``.
        on_frame: called for each data frame; it runs in the event loop and must not block.
    """

    def __init__(self, host: str, path: str, on_frame: FrameCallback | None = None) -> None:
        self.host = host
        self.path = path
        self.on_frame: FrameCallback = on_frame if on_frame is not None else _ignore
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self._open = False
        self._rest = b""

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, only alike.
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode("latin-1"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection to {self.path} lost before the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        if not self._open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._rest = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(f"{self.path}: {status.decode('latin-1')}"))
                self._abort()
                return
            self._open = True
            self.opened.set_result(None)
            data = data[end + 4 :]
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        # Server frames are never masked: 2 header bytes, then an extended length if any.
        pos, size = 0, len(data)
        on_frame = self.on_frame
        while size - pos >= 2:
            first, length = data[pos], data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = first & 0x0F
            payload = data[pos + head : end]
            pos = end
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                on_frame(payload)
            elif opcode == _OP_PING:
                self._write(_OP_PONG, payload)
            elif opcode == _OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._write(_OP_CLOSE, payload[:2])
                self._abort()
                return
        if pos < size:
            self._rest = data[pos:]

    # -- operations ------------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """Send one text frame (``payload`` must be UTF-8)."""
        self._write(_OP_TEXT, payload)

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_header(opcode, len(payload)) + payload)

    def stop_reading(self) -> None:
        """Stop reading from the socket: the server's sends back up, as with a stalled peer."""
        if self.transport is not None:
            self.transport.pause_reading()

    def close(self) -> None:
        """Send a close frame (1000) and close the connection without waiting for the reply."""
        self._write(_OP_CLOSE, (1000).to_bytes(2, "big"))
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _ignore(payload: bytes) -> None:
    pass


async def connect(
    host: str, port: int, path: str, on_frame: FrameCallback | None = None, *, rcvbuf: int | None = None
) -> WsClient:
    """Open a connection and complete the handshake.

    Args:
        rcvbuf: a fixed socket receive buffer, in bytes. Linux grows an unset one up to
            ``tcp_rmem``'s maximum (often 32 MiB): a peer that stops reading would then absorb
            minutes of traffic before the server notices anything.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    _, protocol = await loop.create_connection(lambda: WsClient(host, path, on_frame), sock=sock)
    await protocol.opened
    return protocol
