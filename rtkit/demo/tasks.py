"""The demo's tasks: a bounded in-memory store, and the HTTP routes that publish to ``tasks``."""

from __future__ import annotations

import itertools
from collections import deque
from datetime import datetime, timezone
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from rtkit.hub import Hub

__all__ = ["NewTask", "Task", "TaskStore", "TaskViews"]

TASKS_TOPIC = "tasks"


class NewTask(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /tasks``."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Task(msgspec.Struct):
    """A stored task, as ``GET /tasks`` lists it and the ``tasks`` topic announces it."""

    id: int
    title: str
    description: str
    created_at: str


class TaskStore:
    """The latest ``limit`` tasks, oldest first; older ones are forgotten (memory stays bounded)."""

    def __init__(self, *, limit: int = 1000) -> None:
        self._tasks: deque[Task] = deque(maxlen=limit)
        self._ids = itertools.count(1)

    def add(self, new: NewTask) -> Task:
        """Store ``new`` with an id and a creation time (UTC, ISO 8601)."""
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        task = Task(id=next(self._ids), title=new.title, description=new.description, created_at=created)
        self._tasks.append(task)
        return task

    def all(self) -> list[Task]:
        """Every stored task, oldest first."""
        return list(self._tasks)


def _json(value: object, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status_code, media_type="application/json")


class TaskViews:
    """``GET /tasks`` and ``POST /tasks``, publishing each new task on the ``tasks`` topic."""

    def __init__(self, store: TaskStore, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self._decoder = msgspec.json.Decoder(NewTask)

    async def list(self, request: Request) -> Response:
        """Every stored task, oldest first."""
        return _json(self.store.all())

    async def create(self, request: Request) -> Response:
        """Store the task, publish it, answer 201 with it; 422 with the reason on a bad body."""
        try:
            new = self._decoder.decode(await request.body())
        except msgspec.DecodeError as exc:
            return _json({"detail": str(exc)}, status_code=422)
        task = self.store.add(new)
        await self.hub.publish_event(TASKS_TOPIC, task)
        return _json(task, status_code=201)
