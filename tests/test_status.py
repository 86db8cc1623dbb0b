"""Close codes and error codes are named once, in ``rtkit.status``, and read as their values."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from rtkit.endpoint import _peer_gone
from rtkit.errors import refusal_close_code
from rtkit.status import CloseCode, ErrorCode

README = Path(__file__).resolve().parent.parent / "README.md"


def test_a_close_code_is_its_number_wherever_it_goes() -> None:
    assert int(CloseCode.TRY_AGAIN_LATER) == 1013
    assert str(CloseCode.NORMAL) == f"{CloseCode.NORMAL}" == "1000"
    assert msgspec.json.encode({"code": CloseCode.GOING_AWAY}) == b'{"code":1001}'


def test_an_error_code_is_its_string_on_the_wire_and_in_the_counters() -> None:
    assert msgspec.json.encode({"code": ErrorCode.FORBIDDEN}) == b'{"code":"forbidden"}'
    assert str(ErrorCode.RATE_LIMITED) == "rate_limited"
    counted: dict[str, int] = {ErrorCode.INVALID_TOPIC: 1}
    assert counted.get("invalid_topic") == 1


def test_the_readme_lists_every_error_code() -> None:
    section = README.read_text(encoding="utf-8").split("### Error frames", 1)[1].split("###", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    assert listed == {code.value for code in ErrorCode}


def test_a_refusal_status_stands_for_one_close_code() -> None:
    assert [refusal_close_code(status) for status in (403, 500, 503)] == [
        CloseCode.POLICY_VIOLATION,
        CloseCode.INTERNAL_ERROR,
        CloseCode.TRY_AGAIN_LATER,
    ]


class ServersOwnDisconnect(OSError):
    """An ASGI server's "the peer has gone", as uvicorn's ClientDisconnected is one."""


ServersOwnDisconnect.__module__ = "uvicorn.protocols.utils"


def test_only_a_gone_peer_counts_as_gone_not_a_handlers_own_os_error() -> None:
    assert _peer_gone(ConnectionResetError())
    assert _peer_gone(BrokenPipeError())
    assert _peer_gone(ServersOwnDisconnect())
    # A handler's own I/O errors are faults: logged and closed 1011.
    assert not _peer_gone(TimeoutError())
    assert not _peer_gone(FileNotFoundError())
    assert not _peer_gone(ValueError())
