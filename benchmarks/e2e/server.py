"""The server process: one contender's app on uvicorn (one worker, uvloop, httptools).

The WebSocket protocol is uvicorn's ``websockets-sansio``, or rtkit's for the ``-fast`` contenders.

Run as ``python -m benchmarks.e2e.server --app NAME [--cpu N]``; it binds 127.0.0.1 on a free
port and prints ``PORT <n>`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn

from benchmarks.e2e.apps import build, ws_protocol
from benchmarks.environment import pin, raise_nofile_limit

__all__ = ["main"]


class _Server(uvicorn.Server):
    """Announces its port on stdout once uvicorn listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if sockets:
            print(f"PORT {sockets[0].getsockname()[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    parser.add_argument("--redis-url", default=None, help="serve rtkit on a RedisBackend at this URL")
    parser.add_argument("--redis-prefix", default="rtkit-bench")
    args = parser.parse_args(argv)
    pin(args.cpu)
    raise_nofile_limit()
    if args.redis_url is not None:
        from benchmarks.redis_fanout import redis_app

        app = redis_app(args.redis_url, args.redis_prefix)
    else:
        app = build(args.app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws=ws_protocol(args.app),
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="error",
        access_log=False,
        backlog=4096,
    )
    _Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
