"""The closing of a connection as one state machine: events and times in, the code out."""

from __future__ import annotations

from rtkit.session.closing import Closing, Stage
from rtkit.status import CloseCode


def test_an_open_connection_the_peer_closes_ends_with_the_peers_code() -> None:
    closing = Closing(grace=5)
    assert (closing.stage, closing.ended_with) == (Stage.OPEN, CloseCode.ABNORMAL)
    closing.peer_left(CloseCode.GOING_AWAY)
    assert (closing.stage, closing.ended_with) == (Stage.CLOSED, CloseCode.GOING_AWAY)


def test_the_first_request_to_close_wins_and_sets_the_deadline() -> None:
    closing = Closing(grace=5)
    assert closing.start(CloseCode.POLICY_VIOLATION, "too many invalid frames", now=10.0)
    assert not closing.start(CloseCode.GOING_AWAY, "idle timeout", now=11.0)
    assert (closing.stage, closing.code, closing.reason, closing.deadline) == (
        Stage.CLOSING,
        CloseCode.POLICY_VIOLATION,
        "too many invalid frames",
        15.0,
    )


def test_a_close_frame_sent_is_how_it_ended_whatever_the_peer_says_after() -> None:
    closing = Closing(grace=5)
    closing.start(CloseCode.MESSAGE_TOO_BIG, "too big", now=0.0)
    closing.sent(CloseCode.MESSAGE_TOO_BIG)
    closing.peer_left(CloseCode.NORMAL)
    assert (closing.stage, closing.ended_with, closing.close_sent) == (Stage.CLOSED, 1009, True)
    assert not closing.expire(100.0)


def test_a_peer_that_takes_nothing_is_let_go_at_the_deadline_with_the_code_asked_for() -> None:
    closing = Closing(grace=5)
    closing.start(CloseCode.TRY_AGAIN_LATER, "slow consumer", now=0.0)
    assert not closing.expire(4.9)
    assert closing.expire(5.0)
    assert (closing.stage, closing.ended_with, closing.close_sent) == (Stage.CLOSED, 1013, False)
    closing.peer_left(CloseCode.ABNORMAL)  # the socket's end, after: changes nothing
    assert closing.ended_with == CloseCode.TRY_AGAIN_LATER


def test_a_peer_that_leaves_before_the_servers_close_went_out_ends_it_its_way() -> None:
    closing = Closing(grace=5)
    closing.start(CloseCode.GOING_AWAY, "idle timeout", now=0.0)
    assert closing.ended_with == CloseCode.ABNORMAL  # not ended yet
    closing.peer_left(CloseCode.NORMAL)
    assert (closing.ended_with, closing.deadline) == (CloseCode.NORMAL, None)
    assert not closing.expire(10.0)


def test_a_refused_handshake_ends_with_its_code() -> None:
    closing = Closing(grace=5)
    closing.refuse(CloseCode.TRY_AGAIN_LATER)
    assert (closing.stage, closing.ended_with) == (Stage.CLOSED, 1013)
    assert not closing.start(CloseCode.NORMAL, "", now=0.0)
