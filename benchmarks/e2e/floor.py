"""The machine's own loopback round trip: what a 1-connection echo pays before any server work.

Two processes pass one 100-byte message back and forth over a TCP socket on 127.0.0.1, with
blocking calls and pinned as the server and the load client are: no WebSocket, no event loop,
nothing in Python but the two calls. With one message in flight, each echo contender's round
trip is this one plus what the server and the load client do per message, so the figure says
how much of a 1-connection ratio the servers can move at all. On a virtual machine it is
mostly the two cross-core wake-ups.

The echo side runs as ``python -m benchmarks.e2e.floor --fd N [--cpu N]``: it serves the one
connection that comes to the listening socket it inherits, and exits when that closes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from array import array

from benchmarks.e2e.loadgen import LoadResult
from benchmarks.e2e.measure import percentile
from benchmarks.e2e.processes import PROJECT_ROOT, BenchProcessError, child_env
from benchmarks.environment import pin, pinned_to

__all__ = ["MESSAGE_BYTES", "main", "measure"]

MESSAGE_BYTES = 100
"""About the size of the echo benchmark's frame (a ~90-byte ``say`` and its header)."""
_MESSAGE = b"x" * MESSAGE_BYTES
_TIMEOUT = 10.0


def _echo(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    listener.close()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def _round_trip(sock: socket.socket) -> None:
    sock.sendall(_MESSAGE)
    pending = MESSAGE_BYTES
    while pending:
        got = len(sock.recv(pending))
        if not got:
            raise BenchProcessError("the loopback echo process closed the connection")
        pending -= got


def measure(
    *,
    server_cpu: int | None,
    client_cpu: int | None,
    seconds: float,
    warmup: float,
    max_round_trips: int,
) -> LoadResult:
    """Time round trips against an echo process on ``server_cpu``, from this process.

    This process is moved to ``client_cpu`` meanwhile, where the load client would run, and
    back afterwards. Bounded by ``seconds`` after ``warmup`` and by ``max_round_trips``.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        args = [sys.executable, "-m", "benchmarks.e2e.floor", "--fd", str(listener.fileno())]
        if server_cpu is not None:
            args += ["--cpu", str(server_cpu)]
        # Started before this process moves: a child can only pin itself to a core its parent
        # may run on. The listening socket is handed down, so the connection is queued at
        # once: there is no port to announce and nothing to wait for but the first reply.
        proc = subprocess.Popen(args, pass_fds=[listener.fileno()], cwd=PROJECT_ROOT, env=child_env())
        address = listener.getsockname()
    notes: list[str] = []
    try:
        with pinned_to(client_cpu), socket.create_connection(address, timeout=_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts, elapsed = _time_round_trips(sock, seconds, warmup, max_round_trips)
            # Both sides answered, so both have placed themselves: say where, if not as asked
            # (the figure of two processes sharing a core is a different one).
            for side, pid, cpu in (("echo", proc.pid, server_cpu), ("timing", 0, client_cpu)):
                cores = _cores(pid)
                if cpu is not None and cores is not None and cores != [cpu]:
                    notes.append(f"the {side} process ran on cores {cores}, not on core {cpu}")
    except OSError as exc:
        raise BenchProcessError(f"the loopback round trip failed: {exc!r}") from exc
    finally:
        proc.terminate()
        proc.wait(_TIMEOUT)
    rtts = array("d", sorted(rtts))
    return LoadResult(
        metrics={
            "round_trips_per_s": len(rtts) / elapsed if elapsed > 0 else 0.0,
            "rtt_p50_us": percentile(rtts, 0.5) * 1e6,
            "rtt_p99_us": percentile(rtts, 0.99) * 1e6,
            "round_trips": float(len(rtts)),
        },
        notes=notes,
    )


def _cores(pid: int) -> list[int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    return sorted(os.sched_getaffinity(pid))


def _time_round_trips(
    sock: socket.socket, seconds: float, warmup: float, max_round_trips: int
) -> tuple[array[float], float]:
    clock = time.perf_counter
    _round_trip(sock)  # the first waits for the echo process to start
    start = clock()
    while clock() - start < warmup:
        _round_trip(sock)
    rtts: array[float] = array("d")
    start = now = clock()
    deadline = start + seconds
    while now < deadline and len(rtts) < max_round_trips:
        _round_trip(sock)
        later = clock()
        rtts.append(later - now)
        now = later
    return rtts, now - start


def main(argv: list[str] | None = None) -> int:
    """Echo the one connection that comes to the inherited listening socket."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket's descriptor")
    parser.add_argument("--cpu", type=int, default=None, help="pin the echo process to this core")
    args = parser.parse_args(argv)
    pin(args.cpu)
    _echo(socket.socket(fileno=args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
