"""``ChatEndpoint``: rooms with presence, named by a path parameter."""

from __future__ import annotations

import secrets
import time
from typing import ClassVar

from starlette.websockets import WebSocket

from rtkit.channels import room_channel, room_group
from rtkit.codec import encode
from rtkit.endpoint import RealtimeEndpoint
from rtkit.errors import HandshakeRefusedError
from rtkit.frame import Frame
from rtkit.limits import topic_name_error
from rtkit.messages import ChatInbound, Gap, Joined, Left, Message, Said, Say, Welcome
from rtkit.status import ErrorCode

__all__ = ["ChatEndpoint"]


class ChatEndpoint(RealtimeEndpoint):
    """A chat room per value of the ``{room}`` path parameter.

    On connect the client gets ``welcome`` (its name and the members, itself included) and the
    others get ``joined``; ``say`` sends ``message`` to every member (the sender too, unless
    ``echo_to_sender`` is False); on leaving, the others get ``left``. The user's name is the
    ``?name=`` query parameter, or a generated ``guest-xxxxxx``; override ``user_name`` to take
    it from authentication instead.

    A client may see ``joined`` for a member already listed in its ``welcome`` when both join
    at the same moment; treat the member list as a set.

    A room name that breaks the topic name rule (``rtkit.limits.TOPIC_NAME_RULE``) or a name
    longer than ``max_name_length`` refuses the socket before accept (HTTP 403, the reason in
    the body). ``on_authorize("join", room)`` returning False answers an
    error frame ``forbidden``: the connection stays open, outside the room, and every ``say``
    is refused the same way.
    """

    inbound = ChatInbound
    room_param: ClassVar[str] = "room"
    """The path parameter that names the room."""
    echo_to_sender: ClassVar[bool] = True
    """Whether the sender receives its own messages."""
    max_name_length: ClassVar[int] = 64
    """Longer names are refused before accept (HTTP 403)."""

    room: str
    """The room this connection is in."""
    user: str
    """The connection's display name."""
    _joined = False

    def room_name(self, websocket: WebSocket) -> str:
        """The room to join: the ``room_param`` path parameter."""
        return str(websocket.path_params[self.room_param])

    def user_name(self, websocket: WebSocket) -> str:
        """The display name: ``?name=`` stripped, or a generated guest name."""
        name = websocket.query_params.get("name", "").strip()
        return name or f"guest-{secrets.token_hex(3)}"

    async def on_handshake(self, websocket: WebSocket) -> None:
        """Read the room and the name; refuse a name too long or a room name against the rule."""
        self.room = self.room_name(websocket)
        self.user = self.user_name(websocket)
        if len(self.user) > self.max_name_length:
            raise HandshakeRefusedError(f"name too long: at most {self.max_name_length} characters")
        problem = topic_name_error(self.room)
        if problem is not None:
            raise HandshakeRefusedError(f"room {problem}")

    async def on_connect(self, websocket: WebSocket) -> None:
        """Accept, then join the room (``on_handshake`` has read and checked its name)."""
        await self.accept()
        if await self.on_authorize("join", self.room):
            await self.join_room()
        else:
            self.queue_error(ErrorCode.FORBIDDEN, f"not allowed to join {self.room!r}")

    async def join_room(self) -> None:
        """Subscribe to the room, record presence, welcome this client, tell the others."""
        # Subscribe before reading the member list: anyone missing from the list joins later
        # and so is announced to us; `welcome` goes to the front of the queue.
        await self.subscribe(room_channel(self.room, self.namespace))
        await self.hub.join(room_group(self.room, self.namespace), str(self.connection_id), self.user)
        # From here on others may find this member in their `welcome` list, so leaving is
        # announced even if the rest of the join fails: a `left` for a name a client never
        # saw is harmless to it, a member listed and never announced gone would stay forever.
        self._joined = True
        members = await self.hub.members(room_group(self.room, self.namespace))
        welcome = Frame(encode(Welcome(room=self.room, user=self.user, members=members)))
        self.queue_frame(welcome, first=True)
        await self.publish(
            room_channel(self.room, self.namespace),
            Joined(room=self.room, user=self.user),
            include_self=False,
        )

    def on_gap(self, channel: str, missed: int) -> None:
        """Tell the client ``{"type": "gap", "room": R, "missed": N}``."""
        self.queue_frame(Frame(encode(Gap(room=self.room, missed=missed))))

    async def on_say(self, websocket: WebSocket, message: Say) -> None:
        """Send ``message`` to the room, and ``said`` to the sender if it gave a ``ref``."""
        if not self._joined:
            self.queue_error(ErrorCode.FORBIDDEN, f"not a member of {self.room!r}", ref=message.ref)
            return
        out = Message(room=self.room, user=self.user, text=message.text, ts=time.time())
        await self.publish(room_channel(self.room, self.namespace), out, include_self=self.echo_to_sender)
        if message.ref is not None:
            self.queue_message(Said(room=self.room, ref=message.ref))

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        """Leave the room and tell the others."""
        if self._joined:
            self._joined = False
            await self.hub.leave(room_group(self.room, self.namespace), str(self.connection_id))
            await self.publish(
                room_channel(self.room, self.namespace),
                Left(room=self.room, user=self.user),
                include_self=False,
            )
