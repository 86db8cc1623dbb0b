"""The demo application behind ``rtkit serve``: chat rooms, topics, live task notifications."""

from __future__ import annotations

from rtkit.demo.app import create_app

__all__ = ["create_app"]
