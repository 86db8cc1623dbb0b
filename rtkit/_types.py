"""ASGI callable types shared by rtkit's modules (Starlette's, re-exported for one import)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]
