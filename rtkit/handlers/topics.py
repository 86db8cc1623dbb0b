"""``TopicEndpoint``: publish/subscribe on named topics."""

from __future__ import annotations

from typing import ClassVar

from starlette.websockets import WebSocket

from rtkit.channels import topic_channel
from rtkit.codec import encode
from rtkit.endpoint import RealtimeEndpoint
from rtkit.frame import Frame
from rtkit.messages import (
    Event,
    Gap,
    Publish,
    Published,
    Subscribe,
    Subscribed,
    TopicInbound,
    Unsubscribe,
    Unsubscribed,
)

__all__ = ["TopicEndpoint"]


class TopicEndpoint(RealtimeEndpoint):
    """Clients subscribe to topics, unsubscribe, and publish events to every subscriber.

    Routed with a ``{topic}`` path parameter (``topic_param``), the socket is subscribed to that
    topic at connect. Application code publishes with ``await hub.publish_event(topic, data)``.
    """

    inbound = TopicInbound
    topic_param: ClassVar[str] = "topic"
    """The path parameter whose topic the socket joins at connect, when the route has it."""

    async def on_connect(self, websocket: WebSocket) -> None:
        """Accept, and subscribe to the path's topic if the route names one."""
        await self.accept()
        topic = websocket.path_params.get(self.topic_param)
        if topic is not None:
            await self.subscribe(topic_channel(str(topic)))

    def on_gap(self, channel: str, missed: int) -> None:
        """Tell the client ``{"type": "gap", "topic": T, "missed": N}``."""
        topic = channel.removeprefix(topic_channel(""))
        self.send_frame(Frame(encode(Gap(topic=topic, missed=missed))))

    async def on_subscribe(self, websocket: WebSocket, message: Subscribe) -> None:
        """Subscribe, then answer ``subscribed``."""
        await self.subscribe(topic_channel(message.topic))
        await self.send_message(Subscribed(topic=message.topic, ref=message.ref))

    async def on_unsubscribe(self, websocket: WebSocket, message: Unsubscribe) -> None:
        """Unsubscribe, then answer ``unsubscribed``: nothing of the topic follows it."""
        await self.unsubscribe(topic_channel(message.topic))
        await self.send_message(Unsubscribed(topic=message.topic, ref=message.ref))

    async def on_publish(self, websocket: WebSocket, message: Publish) -> None:
        """Deliver ``event`` to the topic's subscribers; answer ``published`` if given a ``ref``."""
        await self.publish(topic_channel(message.topic), Event(topic=message.topic, data=message.data))
        if message.ref is not None:
            await self.send_message(Published(topic=message.topic, ref=message.ref))
