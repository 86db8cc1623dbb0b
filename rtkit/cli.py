"""The ``rtkit`` command line: ``rtkit serve`` runs the demo app on uvicorn."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import rtkit

__all__ = ["build_parser", "main"]

WS_IMPLEMENTATIONS = ("auto", "websockets-sansio", "websockets", "wsproto")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rtkit``."""
    parser = argparse.ArgumentParser(prog="rtkit", description="rtkit: real-time WebSockets on Starlette.")
    parser.add_argument("--version", action="version", version=f"rtkit {rtkit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the demo app (chat, topics, tasks) on uvicorn",
        description="Run the demo app: open http://HOST:PORT/ in a browser.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to bind")
    serve.add_argument(
        "--ws",
        choices=WS_IMPLEMENTATIONS,
        default="auto",
        help="uvicorn's WebSocket implementation",
    )
    serve.add_argument(
        "--ws-per-message-deflate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="offer permessage-deflate; off by default: on small frames it costs more CPU and "
        "memory per socket than it saves",
    )
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="log level",
    )
    serve.add_argument("--task-limit", type=int, default=1000, help="how many tasks the demo keeps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtkit`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":  # pragma: no branch - the only command so far
        import uvicorn

        from rtkit.demo import create_app

        uvicorn.run(
            create_app(task_limit=args.task_limit),
            host=args.host,
            port=args.port,
            ws=args.ws,
            ws_per_message_deflate=args.ws_per_message_deflate,
            log_level=args.log_level,
        )
    return 0
