"""The ``rtkit`` command line: ``rtkit serve`` runs the demo app; ``rtkit token`` signs a JWT."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, get_args

import msgspec

import rtkit
from rtkit.limits import Limits, OverflowPolicy

__all__ = ["LOG_FORMAT", "build_parser", "limits_from", "log_config", "main"]

WS_IMPLEMENTATIONS = ("rtkit", "auto", "websockets-sansio", "websockets", "wsproto")
_FAST_PROTOCOL = "rtkit.uvicorn_protocol:FastWebSocketProtocol"
_DEFAULTS = Limits()
JWT_SECRET_ENV = "RTKIT_JWT_SECRET"


def _ws_protocol(choice: str | None) -> str:
    """uvicorn's ``ws`` option for ``--ws``: rtkit's fast protocol if it can run, when unset."""
    if choice not in (None, "rtkit"):
        return choice
    try:
        import rtkit.uvicorn_protocol  # noqa: F401  # needs the websockets library
    except ImportError as exc:
        if choice == "rtkit":
            build_parser().error(f"--ws rtkit: {exc}")
        return "auto"
    return _FAST_PROTOCOL


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one worth showing: not None, not a bare switch."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action, argparse._StoreConstAction):
            return action.help
        return super()._get_help_string(action)


LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
"""Every line of ``rtkit serve``'s log: a timestamp, a level, the logger, the message."""


def log_config(level: str) -> dict[str, Any]:
    """The logging configuration of ``rtkit serve`` (``logging.config.dictConfig``'s schema).

    One handler on the root logger formats every line, uvicorn's, rtkit's and any library's,
    with its time and level, and a traceback follows the ERROR line it belongs to. ``level``
    applies to uvicorn's and rtkit's loggers; other libraries say only WARNING and above.
    """
    upper = level.upper()
    others = upper if logging.getLevelName(upper) >= logging.WARNING else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT, "datefmt": "%Y-%m-%d %H:%M:%S"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": others},
        "loggers": {
            name: {"level": upper, "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rtkit")
        },
    }


def _off_if_zero(value: float) -> float | None:
    return value if value > 0 else None


def _at_least_one(text: str) -> int:
    """A count or size that cannot be turned off: 0 would refuse everything."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _port(text: str) -> int:
    """A TCP port: 0 to 65535 (a larger number would wrap around to another port)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, not {value}")
    return value


def _zero_or_more(kind: type[int] | type[float]) -> Callable[[str], float]:
    """A limit where 0 means off; a negative value is a mistake."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 (off) or more, not {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("limits of every WebSocket route ('0: off' where a flag says so)")
    group.add_argument(
        "--max-message-bytes",
        type=_at_least_one,
        default=_DEFAULTS.max_message_bytes,
        help="largest inbound frame; larger closes 1009",
    )
    group.add_argument(
        "--rate",
        type=_zero_or_more(float),
        default=_DEFAULTS.rate,
        help="inbound frames per second per connection (error frame rate_limited over it); 0: off",
    )
    group.add_argument(
        "--burst",
        type=_at_least_one,
        default=_DEFAULTS.burst,
        help="inbound frames allowed at once above --rate",
    )
    group.add_argument(
        "--max-connections",
        type=_zero_or_more(int),
        default=_DEFAULTS.max_connections,
        help="open connections per process; over it HTTP 503; 0: off",
    )
    group.add_argument(
        "--max-connections-per-principal",
        type=_zero_or_more(int),
        default=0,
        help="open connections per authenticated principal; 0: off",
    )
    group.add_argument(
        "--max-topics",
        type=_at_least_one,
        default=_DEFAULTS.max_topics,
        help="topics one connection may subscribe to",
    )
    group.add_argument(
        "--idle-timeout",
        type=_zero_or_more(float),
        default=0,
        help="seconds without an inbound frame before close 1001; 0: off",
    )
    group.add_argument(
        "--heartbeat",
        type=_zero_or_more(float),
        default=0,
        help="seconds between heartbeat frames to each client; 0: off",
    )
    group.add_argument(
        "--outbox-bytes",
        type=_at_least_one,
        default=_DEFAULTS.outbox_max_bytes,
        help="bytes queued for one socket at most",
    )
    group.add_argument(
        "--overflow",
        choices=get_args(OverflowPolicy),
        default=_DEFAULTS.overflow,
        help="what a full outbox does (disconnect: close 1013)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rtkit``."""
    parser = argparse.ArgumentParser(prog="rtkit", description="rtkit: real-time WebSockets on Starlette.")
    parser.add_argument("--version", action="version", version=f"rtkit {rtkit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the demo app (chat, topics, tasks) on uvicorn",
        description="Run the demo app: open http://HOST:PORT/ in a browser.",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port to bind (0: any free one)")
    serve.add_argument(
        "--ws",
        choices=WS_IMPLEMENTATIONS,
        default=None,
        help="uvicorn's WebSocket implementation; rtkit (the default): its websockets-sansio "
        "with rtkit's fast path for whole data frames",
    )
    serve.add_argument(
        "--ws-per-message-deflate",
        action=argparse.BooleanOptionalAction,
        default=None,  # off; None keeps argparse from adding "(default: False)" to the help
        help="offer permessage-deflate; off by default: on small frames it costs more CPU and "
        "memory per socket than it saves",
    )
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="level of uvicorn's and rtkit's log lines (other libraries log warnings and above)",
    )
    serve.add_argument("--task-limit", type=_at_least_one, default=1000, help="how many tasks the demo keeps")
    serve.add_argument(
        "--redis-url",
        # Read from the environment by main(): as a default, --help would print it, password
        # and all.
        default=None,
        help="share the hub between processes and machines through Redis (env RTKIT_REDIS_URL); "
        "in memory, one process, if unset",
    )
    serve.add_argument("--redis-prefix", default="rtkit-demo", help="namespace of the demo's keys in Redis")
    serve.add_argument(
        "--workers", type=_at_least_one, default=1, help="worker processes (more than one needs --redis-url)"
    )
    serve.add_argument(
        "--jwt-secret",
        # Not os.environ's value as the default: --help would print the secret.
        default=None,
        help=f"HS256 secret of /ws/secure/topics/{{topic}} (env {JWT_SECRET_ENV}); "
        "a public demo secret if unset",
    )
    _add_limit_flags(serve)

    token = commands.add_parser(
        "token",
        help="print a signed HS256 JWT for the demo's secured route",
        formatter_class=_HelpFormatter,
    )
    token.add_argument(
        "--secret",
        default=None,  # read from the environment by main(), as serve's --jwt-secret is
        help=f"the server's --jwt-secret (env {JWT_SECRET_ENV}); the public demo secret if unset",
    )
    token.add_argument("--sub", required=True, help="the principal's name (JWT sub)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until the token expires")
    return parser


def limits_from(args: argparse.Namespace) -> Limits:
    """The ``Limits`` that ``rtkit serve``'s flags ask for."""
    return Limits(
        max_message_bytes=args.max_message_bytes,
        rate=_off_if_zero(args.rate),
        burst=args.burst,
        max_connections=int(args.max_connections) or None,
        max_connections_per_principal=int(args.max_connections_per_principal) or None,
        max_topics=args.max_topics,
        idle_timeout=_off_if_zero(args.idle_timeout),
        heartbeat_interval=_off_if_zero(args.heartbeat),
        outbox_max_bytes=args.outbox_bytes,
        overflow=args.overflow,
    )


def _jwt_secret(given: str | None, flag: str) -> str | None:
    """The HS256 secret from ``flag``, else from ``RTKIT_JWT_SECRET``; None if neither is set.

    A set but unusable one is a usage error. An empty one (a compose file's unset ``${VAR}``)
    is a mistake, not "unset": it is refused here rather than replaced by the public demo
    secret, or raised as a traceback later (from every worker, for serve).
    """
    secret = os.environ.get(JWT_SECRET_ENV) if given is None else given
    if secret is None:
        return None
    from rtkit.auth import JWTAuthenticator
    from rtkit.errors import ConfigurationError

    try:
        JWTAuthenticator(secret)
    except (ConfigurationError, UnicodeError) as exc:
        build_parser().error(f"{flag} (or {JWT_SECRET_ENV}): {exc}")
    return secret


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtkit`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "token":
        from rtkit.auth import create_token
        from rtkit.demo.app import DEMO_SECRET

        # The same secret serve takes, so that the token is one the server beside it accepts;
        # only an absent one means the demo's public secret, exactly as for serve.
        secret = _jwt_secret(args.secret, "--secret")
        print(create_token(DEMO_SECRET if secret is None else secret, args.sub, ttl=args.ttl))
        return 0
    if args.redis_url is None:
        args.redis_url = os.environ.get("RTKIT_REDIS_URL")
    if args.workers > 1 and not args.redis_url:
        build_parser().error("--workers above 1 needs --redis-url: each worker is a process of its own")
    args.jwt_secret = _jwt_secret(args.jwt_secret, "--jwt-secret")
    if args.redis_url:
        try:
            import rtkit.backends.redis  # noqa: F401  # the redis extra
        except ImportError:
            build_parser().error("--redis-url needs the redis extra: pip install 'rtkit[redis]'")
    ws = _ws_protocol(args.ws)
    import uvicorn

    from rtkit.demo.app import SETTINGS_ENV, DemoSettings

    limits = limits_from(args)
    settings = DemoSettings(
        limits=limits,
        jwt_secret=args.jwt_secret,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        task_limit=args.task_limit,
    )
    # Workers are separate processes: they read their settings from the environment.
    os.environ[SETTINGS_ENV] = msgspec.json.encode(settings).decode()
    uvicorn.run(
        "rtkit.demo.app:app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        ws=ws,
        ws_per_message_deflate=bool(args.ws_per_message_deflate),
        # uvicorn refuses larger frames itself, before buffering them, with the same 1009.
        ws_max_size=limits.max_message_bytes,
        log_level=args.log_level,
        log_config=log_config(args.log_level),
    )
    return 0
