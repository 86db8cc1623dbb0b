"""A fanned-out frame reaches each socket in that socket's own wire format.

The hub looks each subscriber's ``offer`` up once, when it subscribes; an accepted JSON
connection on asyncio hands it its outbox's text path. These tests pin that the choice never
sends JSON text to a MessagePack socket, whenever it subscribed.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from rtkit import Hub, RealtimeEndpoint
from rtkit._types import Message

pytestmark = pytest.mark.anyio


class _Member(RealtimeEndpoint):
    inbound = None


def _member(hub: Hub, *, msgpack: bool) -> _Member:
    scope = {
        "type": "websocket",
        "path": "/",
        "headers": [],
        "query_string": b"",
        "subprotocols": ["rtkit.msgpack"] if msgpack else [],
    }

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    return _Member(scope, receive, send, hub=hub)


def _queued(member: _Member) -> Any:
    event = member.outbox.queue[-1][0]  # not attached to a writer: what was offered waits here
    if "text" in event:
        return ("text", msgspec.json.decode(event["text"]))
    return ("bytes", msgspec.msgpack.decode(event["bytes"]))


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_subscribed_after_accept(msgpack: bool) -> None:
    async with Hub() as hub:
        member = _member(hub, msgpack=msgpack)
        await member.accept()
        await hub.subscribe("c", member)
        await hub.publish("c", {"n": 1})
        assert _queued(member) == ("bytes" if msgpack else "text", {"n": 1})


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_subscribed_before_accept(msgpack: bool) -> None:
    async with Hub() as hub:
        member = _member(hub, msgpack=msgpack)
        await hub.subscribe("c", member)  # the wire format is not known yet
        await member.accept()
        await hub.publish("c", {"n": 2})
        assert _queued(member) == ("bytes" if msgpack else "text", {"n": 2})
