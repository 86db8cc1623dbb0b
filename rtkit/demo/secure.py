"""The demo's secured topics: who may do what once authenticated."""

from __future__ import annotations

from rtkit.demo.tasks import TASKS_TOPIC
from rtkit.endpoint import Action
from rtkit.handlers import TopicEndpoint

__all__ = ["DemoTopicEndpoint", "SecureTopicEndpoint"]


class SecureTopicEndpoint(TopicEndpoint):
    """Topics for authenticated clients only (the route gives it a ``JWTAuthenticator``).

    Any authenticated client may subscribe to any topic; it may publish only on its own
    topics: the one named after its ``sub``, or below it (``ann`` may publish on ``ann`` and
    ``ann/status``).

    Its topics are a namespace of their own: the open ``/ws/topics`` route, on the same hub,
    would otherwise reach them, and anyone could publish as ``ann`` there.
    """

    namespace = "secure"

    async def on_authorize(self, action: Action, name: str) -> bool:
        """Subscribe anywhere; publish only on one's own topics, never on the tasks topic."""
        if action != "publish":
            return True
        if name == TASKS_TOPIC:
            return False
        owner = self.principal.id if self.principal is not None else None
        return owner is not None and (name == owner or name.startswith(f"{owner}/"))


class DemoTopicEndpoint(TopicEndpoint):
    """The demo's open topics: anyone may subscribe and publish, except on the tasks topic,
    which only ``POST /tasks`` announces (every process's task list is built from it)."""

    async def on_authorize(self, action: Action, name: str) -> bool:
        """Refuse publishing on the tasks topic."""
        return not (action == "publish" and name == TASKS_TOPIC)
