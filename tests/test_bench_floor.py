"""The loopback floor of the end-to-end benchmark: two bare processes, placed as asked."""

from __future__ import annotations

import os

import pytest

from benchmarks.e2e.floor import measure
from benchmarks.environment import CLIENT_CPU, SERVER_CPU, can_pin


def test_round_trips_are_timed_without_cores_to_choose() -> None:
    result = measure(server_cpu=None, client_cpu=None, seconds=0.1, warmup=0.02, max_round_trips=500)
    assert 0 < result.metrics["rtt_p50_us"] <= result.metrics["rtt_p99_us"]
    assert result.metrics["round_trips_per_s"] > 0
    assert result.notes == []


def test_the_count_bound_ends_the_window() -> None:
    result = measure(server_cpu=None, client_cpu=None, seconds=30.0, warmup=0.0, max_round_trips=50)
    assert result.metrics["round_trips"] == 50


@pytest.mark.skipif(
    not can_pin() or not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0),
    reason="needs the server's and the client's cores to pin to",
)
def test_each_side_runs_on_its_own_core_and_the_caller_moves_back() -> None:
    before = os.sched_getaffinity(0)
    result = measure(
        server_cpu=SERVER_CPU, client_cpu=CLIENT_CPU, seconds=0.1, warmup=0.02, max_round_trips=500
    )
    # A note would say that a side ran elsewhere: an echo process started after the caller
    # moved could only pin itself to the client's core.
    assert result.notes == []
    assert result.metrics["round_trips_per_s"] > 0
    assert os.sched_getaffinity(0) == before
