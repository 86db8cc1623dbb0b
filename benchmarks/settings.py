"""How big and how long each benchmark runs: the full run, ``--quick``, and the test smoke run."""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = ["PROFILES", "ProfileName", "Settings"]

ProfileName: TypeAlias = Literal["full", "quick", "smoke"]

E2E_CONTENDERS = ("rtkit", "raw-asgi", "starlette", "fastapi-tutorial")
BROADCAST_EXTRAS = ("rtkit-router",)
PROTOCOL_EXTRAS = ("rtkit-fast", "raw-asgi-fast")
INSTRUCTION_CONTENDERS = ("rtkit-fast", "raw-asgi-fast", "rtkit", "raw-asgi", "starlette", "fastapi-tutorial")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes, repeats and bounds of one run. Every load run is bounded by a count and a time."""

    profile: ProfileName
    # codec
    codec_iterations: int
    codec_repeats: int
    # hub fan-out in process
    hub_sizes: tuple[int, ...]
    hub_deliveries: int
    hub_repeats: int
    hub_seconds: float
    # end to end
    e2e_contenders: tuple[str, ...] = E2E_CONTENDERS
    broadcast_extras: tuple[str, ...] = BROADCAST_EXTRAS
    """More contenders for the healthy broadcasts only (rtkit served another way)."""
    protocol_extras: tuple[str, ...] = PROTOCOL_EXTRAS
    """More contenders for echo and the healthy broadcasts: served on rtkit's uvicorn protocol."""
    e2e_repeats: int
    e2e_seconds: float
    """Measured seconds of one load run (after its warm-up)."""
    e2e_warmup: float
    e2e_max_messages: int
    """Each load run also stops after this many messages (replies, or publishes)."""
    echo_connections: tuple[int, ...]
    broadcast_members: tuple[int, ...]
    stalled_members: int
    """Members of the stalled-member broadcast (and of its all-healthy comparison)."""
    stalled_text_bytes: int
    """Text size in the stalled-member runs: large enough that the buffers fill in seconds."""
    stalled_prefill_bytes: int
    """Text published before the stalled run's window opens: more than the kernel (about
    4 MiB of socket buffers on Linux) and rtkit's outbox (1 MiB) can hold for one socket."""
    idle_connections: tuple[int, ...]
    fresh_servers: bool
    """A new server process for the stalled and idle runs (clean memory figures)."""
    # redis
    redis_members: int
    # instructions (callgrind)
    instruction_contenders: tuple[str, ...] = INSTRUCTION_CONTENDERS
    instruction_messages: tuple[int, int, int] = (200, 300, 1300)
    """Messages in the warm-up run, the short run and the long run of each server under
    callgrind (echoes, then publishes to the room)."""
    instruction_broadcast_members: int = 10
    """Members of the room counted per delivery (0: echo only)."""


PROFILES: dict[ProfileName, Settings] = {
    "full": Settings(
        profile="full",
        codec_iterations=50_000,
        codec_repeats=7,
        hub_sizes=(10, 100, 1000, 10_000),
        hub_deliveries=150_000,
        hub_repeats=3,
        hub_seconds=2.0,
        e2e_repeats=5,
        e2e_seconds=1.5,
        e2e_warmup=0.3,
        e2e_max_messages=1_000_000,
        echo_connections=(1, 10, 100),
        broadcast_members=(10, 100, 1000),
        stalled_members=100,
        stalled_text_bytes=4000,
        stalled_prefill_bytes=8_000_000,
        idle_connections=(1000, 5000),
        fresh_servers=True,
        redis_members=100,
    ),
    "quick": Settings(
        profile="quick",
        codec_iterations=5_000,
        codec_repeats=3,
        hub_sizes=(10, 100),
        hub_deliveries=20_000,
        hub_repeats=1,
        hub_seconds=0.5,
        e2e_repeats=1,
        e2e_seconds=0.5,
        e2e_warmup=0.1,
        e2e_max_messages=100_000,
        echo_connections=(10,),
        broadcast_members=(20,),
        stalled_members=20,
        stalled_text_bytes=4000,
        stalled_prefill_bytes=8_000_000,
        idle_connections=(200,),
        fresh_servers=False,
        redis_members=20,
        instruction_contenders=("rtkit-fast", "raw-asgi-fast", "fastapi-tutorial"),
        instruction_messages=(50, 100, 300),
    ),
    "smoke": Settings(
        profile="smoke",
        # The baselines' protocol is checked in process by the smoke test; two servers suffice.
        e2e_contenders=("rtkit", "raw-asgi"),
        codec_iterations=200,
        codec_repeats=1,
        hub_sizes=(10,),
        hub_deliveries=500,
        hub_repeats=1,
        hub_seconds=0.3,
        e2e_repeats=1,
        e2e_seconds=0.15,
        e2e_warmup=0.02,
        e2e_max_messages=2_000,
        echo_connections=(1,),
        broadcast_members=(3,),
        stalled_members=3,
        stalled_text_bytes=1000,
        stalled_prefill_bytes=100_000,
        idle_connections=(5,),
        fresh_servers=False,
        redis_members=4,
        # One server under callgrind: its start is most of the benchmark's time.
        instruction_contenders=("raw-asgi-fast",),
        instruction_messages=(5, 10, 30),
        instruction_broadcast_members=3,
    ),
}
