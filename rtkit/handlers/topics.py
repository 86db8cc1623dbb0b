"""``TopicEndpoint``: publish/subscribe on named topics."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from starlette.websockets import WebSocket

from rtkit.channels import topic_channel
from rtkit.codec import encode, json_to_msgpack
from rtkit.endpoint import Action, RealtimeEndpoint
from rtkit.frame import Frame
from rtkit.limits import topic_name_error
from rtkit.messages import (
    NO_DATA,
    Event,
    Gap,
    Publish,
    Published,
    Ref,
    Subscribe,
    Subscribed,
    TopicInbound,
    Unsubscribe,
    Unsubscribed,
)
from rtkit.status import ErrorCode

__all__ = ["TopicEndpoint"]


class TopicEndpoint(RealtimeEndpoint):
    """Clients subscribe to topics, unsubscribe, and publish events to every subscriber.

    Routed with a ``{topic}`` path parameter (``topic_param``), the socket is subscribed to that
    topic at connect. Application code publishes with ``await hub.publish_event(topic, data)``
    (``namespace=`` the class's ``namespace``, when it has one).

    Every subscribe and publish is checked, in this order: the topic name rule
    (``invalid_topic``), ``limits.max_topics`` for a subscribe (``limit_exceeded``), then
    ``on_authorize`` (``forbidden``). A refusal is an error frame; the connection stays.
    """

    inbound = TopicInbound
    topic_param: ClassVar[str] = "topic"
    """The path parameter whose topic the socket joins at connect, when the route has it."""

    topics: set[str]
    """The topics this connection is subscribed to."""

    async def on_connect(self, websocket: WebSocket) -> None:
        """Accept, and subscribe to the path's topic if the route names one."""
        self.topics = set()
        await self.accept()
        topic = websocket.path_params.get(self.topic_param)
        if topic is not None:
            await self.subscribe_topic(str(topic), None, reply=False)

    async def check(self, action: Action, topic: str, ref: Ref) -> bool:
        """Whether ``action`` on ``topic`` may go ahead; if not, the error frame is queued."""
        problem = topic_name_error(topic)
        if problem is not None:
            self.queue_error(ErrorCode.INVALID_TOPIC, problem, ref=ref)
            return False
        if action == "subscribe" and topic not in self.topics and len(self.topics) >= self.limits.max_topics:
            limit = self.limits.max_topics
            self.queue_error(ErrorCode.LIMIT_EXCEEDED, f"at most {limit} topics per connection", ref=ref)
            return False
        if not await self.on_authorize(action, topic):
            self.queue_error(ErrorCode.FORBIDDEN, f"not allowed to {action} on {topic!r}", ref=ref)
            return False
        return True

    async def subscribe_topic(self, topic: str, ref: Ref, *, reply: bool = True) -> None:
        """Subscribe after the checks; answer ``subscribed`` if ``reply``."""
        if not await self.check("subscribe", topic, ref):
            return
        await self.subscribe(topic_channel(topic, self.namespace))
        self.topics.add(topic)
        if reply:
            self.queue_message(Subscribed(topic=topic, ref=ref))

    def on_gap(self, channel: str, missed: int) -> None:
        """Tell the client ``{"type": "gap", "topic": T, "missed": N}``."""
        topic = channel.removeprefix(topic_channel("", self.namespace))
        self.queue_frame(Frame(encode(Gap(topic=topic, missed=missed))))

    async def on_subscribe(self, websocket: WebSocket, message: Subscribe) -> None:
        """Subscribe, then answer ``subscribed``."""
        await self.subscribe_topic(message.topic, message.ref)

    async def on_unsubscribe(self, websocket: WebSocket, message: Unsubscribe) -> None:
        """Unsubscribe, then answer ``unsubscribed``: nothing of the topic follows it."""
        problem = topic_name_error(message.topic)
        if problem is not None:  # it cannot be subscribed either; say so, as subscribe does
            self.queue_error(ErrorCode.INVALID_TOPIC, problem, ref=message.ref)
            return
        # Off the list first: the hub has let the socket go even if the backend then fails
        # (BackendUnavailableError), and the topic must not count against max_topics.
        self.topics.discard(message.topic)
        await self.unsubscribe(topic_channel(message.topic, self.namespace))
        self.queue_message(Unsubscribed(topic=message.topic, ref=message.ref))

    async def on_publish(self, websocket: WebSocket, message: Publish) -> None:
        """Deliver ``event`` to the topic's subscribers; answer ``published`` if given a ``ref``."""
        if not await self.check("publish", message.topic, message.ref):
            return
        channel = topic_channel(message.topic, self.namespace)
        data: Any = message.data  # JSON bytes, embedded in the event as they came
        if self.wire == "msgpack" and data is not NO_DATA:
            # The hub carries JSON: decode the MessagePack once here. Valid MessagePack may
            # still have no JSON form (an extension type): that is the peer's bad input.
            try:
                payload = encode(Event(topic=message.topic, data=msgspec.msgpack.decode(data)))
            except (msgspec.MsgspecError, TypeError, ValueError, RecursionError) as exc:
                self.queue_error(ErrorCode.INVALID_MESSAGE, f"data has no JSON form: {exc}", ref=message.ref)
                return
            await self.hub.publish_encoded(channel, payload)
        else:
            if data is not NO_DATA:
                # The other way round: valid JSON may hold a number MessagePack cannot (an
                # integer beyond 64 bits), which MessagePack subscribers could not be sent.
                try:
                    json_to_msgpack(data)
                except (msgspec.MsgspecError, OverflowError, RecursionError) as exc:
                    detail = f"data has no MessagePack form: {exc}"
                    self.queue_error(ErrorCode.INVALID_MESSAGE, detail, ref=message.ref)
                    return
            await self.publish(channel, Event(topic=message.topic, data=data))
        if message.ref is not None:
            self.queue_message(Published(topic=message.topic, ref=message.ref))
