"""Encoding and decoding of frames: JSON text frames, or MessagePack binary frames.

A connection speaks one *wire format* for its whole life, chosen at the handshake: MessagePack
when the client offers the ``rtkit.msgpack`` subprotocol, JSON otherwise. The envelopes and the
handlers are the same for both.

Decoders are built once per inbound type (``codec_for`` caches them); encoders are shared, as
msgspec encoders are stateless and safe to reuse.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias

import msgspec

from rtkit.messages import Ref

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "Codec",
    "WireFormat",
    "codec_for",
    "encode",
    "json_to_msgpack",
]

WireFormat: TypeAlias = Literal["json", "msgpack"]
"""How a connection's frames are written: JSON text frames or MessagePack binary frames."""

JSON_SUBPROTOCOL: Final = "rtkit.json"
MSGPACK_SUBPROTOCOL: Final = "rtkit.msgpack"

_json_encoder: Final = msgspec.json.Encoder()
_msgpack_encoder: Final = msgspec.msgpack.Encoder()
_any_json_decoder: Final = msgspec.json.Decoder()
encode_json: Final = _json_encoder.encode
"""``encode(message)`` for JSON, without the call in between (for hot paths)."""


class _RefProbe(msgspec.Struct):
    """Reads ``type`` and ``ref`` out of a frame that failed validation, to answer with them."""

    type: str | None = None
    ref: Ref = None


_MSGPACK_INT_MIN: Final = -(2**63)
_MSGPACK_INT_MAX: Final = 2**64 - 1
_ref_probe_json: Final = msgspec.json.Decoder(_RefProbe)
_ref_probe_msgpack: Final = msgspec.msgpack.Decoder(_RefProbe)


def encode(message: Any, wire: WireFormat = "json") -> bytes:
    """Encode any msgspec-supported value (a Struct, a dict, ...) for ``wire``."""
    if wire == "json":
        return _json_encoder.encode(message)
    return _msgpack_encoder.encode(message)


def json_to_msgpack(payload: bytes) -> bytes:
    """Re-encode a JSON document as MessagePack (done once per fan-out, not per socket)."""
    return _msgpack_encoder.encode(_any_json_decoder.decode(payload))


class Codec:
    """The JSON and MessagePack decoders for one inbound type.

    Args:
        inbound: the type frames must decode to, usually a union of tagged Structs.
    """

    __slots__ = ("inbound", "json", "msgpack")

    def __init__(self, inbound: Any) -> None:
        self.inbound = inbound
        self.json: msgspec.json.Decoder[Any] = msgspec.json.Decoder(inbound)
        self.msgpack: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(inbound)

    def decoder(self, wire: WireFormat) -> Callable[[Any], Any]:
        """The bare msgspec ``decode`` for ``wire``, for hot loops (same errors as ``decode``)."""
        return self.json.decode if wire == "json" else self.msgpack.decode

    def decode(self, data: str | bytes, wire: WireFormat = "json") -> Any:
        """Decode and validate one frame.

        Raises:
            msgspec.DecodeError: not valid JSON / MessagePack.
            msgspec.ValidationError: valid, but not of the inbound type (its message names
                the path of the offending field).
        """
        if wire == "json" or isinstance(data, str):
            return self.json.decode(data)
        return self.msgpack.decode(data)

    @staticmethod
    def probe(data: str | bytes, wire: WireFormat = "json") -> tuple[str | None, Ref]:
        """Best effort: the ``type`` and ``ref`` of a frame that failed validation."""
        try:
            if wire == "json" or isinstance(data, str):
                probe = _ref_probe_json.decode(data)
            else:
                probe = _ref_probe_msgpack.decode(data)
        except (msgspec.DecodeError, RecursionError):
            return None, None
        ref = probe.ref
        if wire == "msgpack" and isinstance(ref, int) and not _MSGPACK_INT_MIN <= ref <= _MSGPACK_INT_MAX:
            # A JSON text frame sent to a MessagePack connection may carry an integer that
            # MessagePack cannot: the answer goes without it rather than fail to encode.
            ref = None
        return probe.type, ref


@functools.lru_cache(maxsize=256)
def codec_for(inbound: Any) -> Codec:
    """The shared ``Codec`` of ``inbound`` (built on first use, then cached)."""
    return Codec(inbound)
