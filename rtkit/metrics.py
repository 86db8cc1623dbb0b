"""Counters of one process: connections, messages, errors, drops; readable in Python and as
Prometheus text.

One ``Metrics`` object lives on each ``Hub`` (``hub.metrics``) and is shared by every endpoint
routed with that hub. Counters are plain integers bumped in the event loop: reading them costs
nothing and needs no lock.
"""

from __future__ import annotations

from collections import Counter

from rtkit.backends.base import BackendHealth

__all__ = ["Metrics"]

_COUNTERS: dict[str, str] = {
    "published": "Messages this process handed to the backend.",
    "received": "Messages the backend delivered to this process.",
    "delivered": "Frames queued on a local socket's outbox by fan-out.",
    "dropped": "Frames discarded: refused by a full or closing outbox, or dropped by its policy.",
    "gaps": "Losses the backend reported (each may cover several messages).",
    "connections_accepted": "WebSocket connections accepted.",
    "messages_in": "Frames received from clients.",
    "messages_out": "Frames sent to clients.",
    "slow_consumer_disconnects": "Sockets closed with 1013 because their outbox overflowed.",
}


class Metrics:
    """The counters of one hub and the endpoints that use it."""

    __slots__ = (
        "closes",
        "connections_accepted",
        "connections_open",
        "delivered",
        "dropped",
        "errors",
        "gaps",
        "messages_in",
        "messages_out",
        "open_by_principal",
        "published",
        "received",
        "refused",
        "slow_consumer_disconnects",
    )

    def __init__(self) -> None:
        self.published = 0
        self.received = 0
        self.delivered = 0
        self.dropped = 0
        self.gaps = 0
        self.connections_accepted = 0
        self.connections_open = 0
        """Connections accepted and not yet closed."""
        self.messages_in = 0
        self.messages_out = 0
        self.slow_consumer_disconnects = 0
        self.refused: Counter[str] = Counter()
        """Connections refused before accept, by reason (``auth``, ``capacity``, ...)."""
        self.errors: Counter[str] = Counter()
        """Error frames sent, by code (``invalid_message``, ``forbidden``, ...)."""
        self.closes: Counter[int] = Counter()
        """Connections closed, by close code."""
        self.open_by_principal: Counter[str] = Counter()
        """Open connections of each authenticated principal (for the per-principal cap)."""

    def as_dict(self) -> dict[str, object]:
        """Every counter by name (labelled ones as dicts)."""
        values: dict[str, object] = {name: getattr(self, name) for name in _COUNTERS}
        values["connections_open"] = self.connections_open
        values["refused"] = dict(self.refused)
        values["errors"] = dict(self.errors)
        values["closes"] = {str(code): n for code, n in self.closes.items()}
        return values

    def render_prometheus(self, prefix: str = "rtkit", *, health: BackendHealth | None = None) -> str:
        """The counters in Prometheus' text exposition format (version 0.0.4).

        Args:
            prefix: the metric names' prefix.
            health: the backend's health, rendered as ``{prefix}_backend_up`` (1 up, 0.5
                degraded, 0 down) and ``{prefix}_backend_reconnects_total``.
        """
        lines: list[str] = []
        if health is not None:
            up = {"up": 1.0, "degraded": 0.5, "down": 0.0}[health.state]
            lines += [
                f"# HELP {prefix}_backend_up Backend health: 1 up, 0.5 degraded, 0 down.",
                f"# TYPE {prefix}_backend_up gauge",
                f"{prefix}_backend_up {up:g}",
                f"# HELP {prefix}_backend_reconnects_total Reconnects of the backend.",
                f"# TYPE {prefix}_backend_reconnects_total counter",
                f"{prefix}_backend_reconnects_total {health.reconnects}",
            ]
        for name, text in _COUNTERS.items():
            lines += [f"# HELP {prefix}_{name}_total {text}", f"# TYPE {prefix}_{name}_total counter"]
            lines.append(f"{prefix}_{name}_total {getattr(self, name)}")
        lines += [
            f"# HELP {prefix}_connections_open Connections accepted and not yet closed.",
            f"# TYPE {prefix}_connections_open gauge",
            f"{prefix}_connections_open {self.connections_open}",
        ]
        labelled: list[tuple[str, str, str, Counter[str] | Counter[int]]] = [
            ("connections_refused", "reason", "Connections refused before accept.", self.refused),
            ("error_frames", "code", "Error frames sent to clients.", self.errors),
            ("closes", "code", "Connections closed, by close code.", self.closes),
        ]
        for name, label, text, counter in labelled:
            lines += [f"# HELP {prefix}_{name}_total {text}", f"# TYPE {prefix}_{name}_total counter"]
            for key, value in sorted(counter.items(), key=lambda item: str(item[0])):
                lines.append(f'{prefix}_{name}_total{{{label}="{_label_value(key)}"}} {value}')
        return "\n".join(lines) + "\n"


def _label_value(key: object) -> str:
    """A label value as the exposition format wants it: backslash, quote and newline escaped
    (an application's own error code may hold any of them)."""
    return str(key).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
