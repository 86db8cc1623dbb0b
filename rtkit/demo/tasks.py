"""The demo's tasks: a bounded store kept in step across processes, and the HTTP routes.

Each process keeps the latest tasks in memory. A new task is published on the ``tasks`` topic,
and every process's store is itself a subscriber of that topic, so with the Redis backend a task
created through one worker is listed by all of them (from the moment they started; a gap
notice means some may be missing).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from rtkit.errors import BackendUnavailableError, ConfigurationError
from rtkit.frame import Frame
from rtkit.hub import Hub, new_subscriber_id

__all__ = [
    "DESCRIPTION_MAX",
    "MAX_BODY_BYTES",
    "TASKS_TOPIC",
    "TITLE_MAX",
    "NewTask",
    "Task",
    "TaskStore",
    "TaskViews",
]

TASKS_TOPIC = "tasks"
TITLE_MAX = 200
"""Characters in a task's title at most."""
DESCRIPTION_MAX = 2000
"""Characters in a task's description at most."""
MAX_BODY_BYTES = 12 * (TITLE_MAX + DESCRIPTION_MAX) + 1024
"""Bytes of a ``POST /tasks`` body at most (413 above). Held to the fields' limits: 12 bytes
a character is the most JSON spends on one (an astral one written as two ``\\u`` escapes, as
Python's ``json.dumps`` does by default), and 1 KiB is left for the keys and white space, so no
body within the limits is refused for its size."""


class NewTask(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /tasks``."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=TITLE_MAX)]
    description: Annotated[str, msgspec.Meta(max_length=DESCRIPTION_MAX)] = ""


class Task(msgspec.Struct):
    """A stored task, as ``GET /tasks`` lists it and the ``tasks`` topic announces it.

    Events on the topic are held to the same bounds as ``POST /tasks`` bodies.
    """

    id: int
    """Increasing with time: milliseconds since the epoch times 1000, plus a random 0-999,
    and above every id this process gave before (exact in JavaScript numbers until the year
    2255). Unique within a process; across processes two tasks created in the same
    millisecond share an id once in a thousand, and the later one is then listed only where
    it was created."""
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=TITLE_MAX)]
    description: Annotated[str, msgspec.Meta(max_length=DESCRIPTION_MAX)]
    created_at: Annotated[str, msgspec.Meta(max_length=64)]


class _TaskEvent(msgspec.Struct):
    data: Task


class TaskStore:
    """The latest ``limit`` tasks, oldest first; older ones are forgotten (memory stays bounded).

    It is also a hub subscriber of the ``tasks`` topic: tasks other processes create arrive
    here too.
    """

    def __init__(self, *, limit: int = 1000) -> None:
        if limit < 1:
            raise ConfigurationError(f"TaskStore: limit must be 1 or more, not {limit}")
        self.limit = limit
        self.subscriber_id = new_subscriber_id()
        self._tasks: OrderedDict[int, Task] = OrderedDict()
        self._decoder = msgspec.json.Decoder(_TaskEvent)
        self._last_id = 0

    def create(self, new: NewTask) -> Task:
        """Store ``new`` with a new id (see ``Task.id``) and a creation time (UTC, ISO 8601)."""
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        drawn = time.time_ns() // 1_000_000 * 1000 + secrets.randbelow(1000)
        # Two tasks created in the same millisecond here must not share an id: the store keeps
        # the first of two with one id, and the second would be answered 201 yet never listed.
        task_id = self._last_id = max(drawn, self._last_id + 1)
        task = Task(id=task_id, title=new.title, description=new.description, created_at=created)
        self._keep(task)
        return task

    def _keep(self, task: Task) -> None:
        if task.id in self._tasks:
            return
        self._tasks[task.id] = task
        while len(self._tasks) > self.limit:
            self._tasks.popitem(last=False)

    def all(self) -> list[Task]:
        """Every stored task, oldest first."""
        return list(self._tasks.values())

    def offer(self, frame: Frame) -> bool:
        """A task event from the hub (this process's or another's)."""
        try:
            self._keep(self._decoder.decode(frame.payload).data)
        except msgspec.DecodeError:
            return False  # not a task, or out of bounds: only this app publishes tasks
        return True

    def on_gap(self, channel: str, missed: int) -> None:
        """Tasks were lost between processes: nothing to refetch from, so nothing to do."""


def _json(value: object, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status_code, media_type="application/json")


def _is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").partition(";")[0]
    return media_type.strip().lower() == "application/json"


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None  # absent (chunked) or malformed: the read below is capped all the same


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is longer than ``limit`` bytes (the rest unread)."""
    chunks: list[bytes] = []
    size = 0
    # aclosing: leaving early must close Starlette's stream now, not whenever it is collected.
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


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
        """Store the task, publish it, answer 201 with it; 422 on a bad body, 503 if the
        backend is out of reach (the task is kept here, but the others were not told).

        The body must be ``application/json`` (415 otherwise) of at most ``MAX_BODY_BYTES``
        (413 otherwise, before more than that is read).
        """
        # A cross-site page may send a text/plain or form body without a CORS preflight, and
        # so create tasks on a demo running on the visitor's machine: application/json needs
        # a preflight, which this app never grants.
        if not _is_json(request):
            return _json({"detail": "the body must be application/json"}, status_code=415)
        too_large = _json({"detail": f"the body must be {MAX_BODY_BYTES} bytes or fewer"}, status_code=413)
        declared = _declared_length(request)
        if declared is not None and declared > MAX_BODY_BYTES:
            return too_large
        body = await _body_within(request, MAX_BODY_BYTES)
        if body is None:
            return too_large
        try:
            new = self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            return _json({"detail": str(exc)}, status_code=422)
        task = self.store.create(new)
        try:
            await self.hub.publish_event(TASKS_TOPIC, task)
        except BackendUnavailableError as exc:
            return _json({"detail": f"stored, but not announced: {exc}", "task": task}, status_code=503)
        return _json(task, status_code=201)
