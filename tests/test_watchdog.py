"""The connection's timers as pure code: times in, what is due out; nothing waits."""

from __future__ import annotations

from rtkit.limits import Limits
from rtkit.session.watchdog import Tick, Watchdog


def quiet(dog: Watchdog, now: float, last_inbound: float) -> Tick:
    """A tick while no handler runs."""
    return dog.tick(now, last_inbound=last_inbound, handling_since=None, reading_taken_over=False)


def test_an_idle_connection_is_closed_at_its_timeout_and_not_before() -> None:
    dog = Watchdog(Limits(idle_timeout=10, stall_check_interval=None), now=0.0)
    assert quiet(dog, 0.0, 0.0) == Tick(False, False, False, wake_at=10.0)
    assert quiet(dog, 6.0, 5.0) == Tick(False, False, False, wake_at=15.0)
    assert quiet(dog, 15.0, 5.0).close_idle


def test_a_running_handler_is_not_idleness() -> None:
    dog = Watchdog(Limits(idle_timeout=8, stall_check_interval=None), now=0.0)
    busy = dog.tick(20.0, last_inbound=0.0, handling_since=1.0, reading_taken_over=False)
    assert busy == Tick(False, False, False, wake_at=22.0)  # a quarter of the timeout later
    # Done by the next tick: idleness counts from when the handler was last seen running.
    assert quiet(dog, 22.0, 0.0) == Tick(False, False, False, wake_at=28.0)
    assert quiet(dog, 28.0, 0.0).close_idle


def test_heartbeats_come_every_interval() -> None:
    dog = Watchdog(Limits(heartbeat_interval=5, stall_check_interval=None), now=100.0)
    assert quiet(dog, 100.0, 100.0) == Tick(False, False, False, wake_at=105.0)
    assert quiet(dog, 105.0, 100.0) == Tick(False, True, False, wake_at=110.0)
    assert quiet(dog, 107.0, 100.0) == Tick(False, False, False, wake_at=110.0)
    # A late tick sends one heartbeat, not the ones it missed, and counts on from there.
    assert quiet(dog, 123.0, 100.0) == Tick(False, True, False, wake_at=128.0)


def test_a_stalled_handler_gets_the_socket_read_for_it_once() -> None:
    dog = Watchdog(Limits(stall_check_interval=5), now=0.0)
    assert dog.tick(3.0, last_inbound=0.0, handling_since=1.0, reading_taken_over=False) == Tick(
        False, False, False, wake_at=8.0
    )
    assert dog.tick(6.0, last_inbound=0.0, handling_since=1.0, reading_taken_over=False) == Tick(
        False, False, True, wake_at=None
    )
    # Taken over: nothing more to watch for it.
    assert dog.tick(20.0, last_inbound=0.0, handling_since=1.0, reading_taken_over=True).wake_at is None


def test_the_nearest_deadline_wins_and_an_idle_close_comes_alone() -> None:
    dog = Watchdog(Limits(idle_timeout=12, heartbeat_interval=5, stall_check_interval=3), now=0.0)
    assert quiet(dog, 0.0, 0.0).wake_at == 3.0
    assert quiet(dog, 12.0, 0.0) == Tick(True, False, False, wake_at=None)


def test_with_nothing_to_watch_the_watch_ends() -> None:
    dog = Watchdog(Limits(stall_check_interval=None), now=0.0)
    assert quiet(dog, 1.0, 0.0) == Tick(False, False, False, wake_at=None)
