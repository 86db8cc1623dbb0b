"""Seeing through ``send``: Starlette's pass-through wrapper, and a server's synchronous write.

Starlette's exception handling (its ``ExceptionMiddleware``, and each route) hands the app a
``send`` closure of its own per connection. It remembers whether an HTTP response has started
(``http.response.start``) and passes every message on; for a WebSocket's ``websocket.send`` it
does nothing else. A broadcast calls each member's ``send`` in turn, from memory that has long
left the CPU caches in a large room, so that closure and its cells cost a measurable share of
a mounted endpoint's time (see the README's "Performance").

The outbox sends WebSocket frames through the ``send`` underneath instead. Only a closure
whose code is Starlette's own, with the shape read here when this module is imported, is seen
through; any other wrapper (a user's middleware, a future Starlette) is called as it is.

Under that, a server's ``send`` is a coroutine function: each frame costs a coroutine, and the
outbox runs it in a driver (see ``rtkit.session.outbox``). rtkit's own uvicorn protocol also offers
``write_now(event) -> bool``, which writes a frame the socket can take at once without any of
that. ``write_now_of`` finds it, only for that protocol's own ``send`` (not a subclass's
override, not a wrapper).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, cast

from rtkit._types import Message, Send

__all__ = ["unwrap_send", "write_now_of"]


def _find_code(parent: types.CodeType, name: str) -> types.CodeType | None:
    for const in parent.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    return None


def _starlette_sender() -> types.CodeType | None:
    """The code of Starlette's pass-through ``sender``, if it has the shape this module knows."""
    try:
        from starlette._exception_handler import wrap_app_handling_exceptions
    except ImportError:  # pragma: no cover - a Starlette without it
        return None
    wrapped_app = _find_code(wrap_app_handling_exceptions.__code__, "wrapped_app")
    sender = _find_code(wrapped_app, "sender") if wrapped_app is not None else None
    if sender is None or sender.co_freevars != ("response_started", "send"):
        return None
    # It only watches for an HTTP response start: a message of any other type passes through.
    if "http.response.start" not in sender.co_consts or sender.co_argcount != 1:
        return None
    return sender


_SENDER = _starlette_sender()


def unwrap_send(send: Send) -> Send:
    """The ``send`` under Starlette's pass-through wrappers, or ``send`` itself.

    Only for WebSocket messages: the wrapper's one job concerns HTTP responses.
    """
    for _ in range(8):  # an app mounted in an app: one wrapper per level
        code = getattr(send, "__code__", None)
        closure = getattr(send, "__closure__", None)
        if code is None or code is not _SENDER or not closure:
            break
        send = cast(Send, closure[1].cell_contents)  # co_freevars: (response_started, send)
    return send


def write_now_of(send: Send) -> Callable[[Message], bool] | None:
    """The synchronous ``write_now`` behind ``send``, or None if ``send`` has none.

    ``send`` must be the bound ``send`` of an object whose class names that very function as
    the one its ``write_now`` stands for (``_writes_now_for``), as ``FastWebSocketProtocol``
    does. ``write_now(event)`` returns True once the frame is written, False when ``send`` must
    be awaited instead.
    """
    owner: Any = getattr(send, "__self__", None)
    function = getattr(send, "__func__", None)
    if function is None or function is not getattr(type(owner), "_writes_now_for", None):
        return None
    write_now: Callable[[Message], bool] | None = getattr(owner, "write_now", None)
    return write_now
