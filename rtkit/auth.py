"""Authentication at connect: turning a handshake into a principal, or refusing it.

An endpoint with an ``authenticator`` calls it before ``on_connect``; ``None`` refuses the
socket before accept (HTTP 403). Credentials are looked for, in order, in the
``Authorization: Bearer`` header, the ``Sec-WebSocket-Protocol`` pair that browsers can send
(``new WebSocket(url, ["rtkit.bearer", token])``), a ``token`` cookie and a ``?token=`` query
parameter; ``bearer_token`` does the looking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Final

import msgspec
from starlette.requests import HTTPConnection

from rtkit.errors import ConfigurationError

__all__ = [
    "BEARER_SUBPROTOCOL",
    "Authenticator",
    "JWTAuthenticator",
    "Principal",
    "bearer_token",
    "create_token",
]

BEARER_SUBPROTOCOL: Final = "rtkit.bearer"
"""Offered by a browser client together with its token as a second subprotocol."""


class Principal(msgspec.Struct, frozen=True):
    """Who is on the other end of a connection.

    Args:
        id: a stable identifier (the JWT ``sub``); connection caps count per ``id``.
        claims: whatever else the credentials said.
    """

    id: str
    claims: dict[str, Any] = msgspec.field(default_factory=dict)


def bearer_token(connection: HTTPConnection, *, cookie: str = "token", query: str = "token") -> str | None:
    """The bearer token of a handshake, or None: header, subprotocol pair, cookie, query."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    offered = list(connection.scope.get("subprotocols", ()))
    if BEARER_SUBPROTOCOL in offered:
        position = offered.index(BEARER_SUBPROTOCOL)
        if position + 1 < len(offered):
            return str(offered[position + 1])
    return connection.cookies.get(cookie) or connection.query_params.get(query) or None


class Authenticator(ABC):
    """Turns a handshake into a ``Principal``; subclass it for your own scheme."""

    @abstractmethod
    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        """The principal the handshake proves, or None to refuse the socket (HTTP 403)."""


MIN_SECRET_BYTES: Final = 32
"""RFC 7518 section 3.2: an HS256 key at least as long as the hash output."""


def _check_secret(secret: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes (RFC 7518 section 3.2); "
            f"this one has {len(secret.encode())}"
        )


def _jwt() -> Any:
    try:
        import jwt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError("JWT authentication needs PyJWT: pip install 'rtkit[jwt]'") from exc
    return jwt


class JWTAuthenticator(Authenticator):
    """Accepts HS256 JWT bearer tokens signed with ``secret`` whose ``exp`` has not passed.

    Needs the ``rtkit[jwt]`` extra (PyJWT). Tokens must carry ``sub`` and ``exp``.

    Args:
        secret: the shared HMAC secret.
        audience: when set, the ``aud`` claim must match.
        leeway: seconds of clock skew tolerated on ``exp``.
    """

    def __init__(self, secret: str, *, audience: str | None = None, leeway: float = 0.0) -> None:
        _check_secret(secret)
        self._jwt = _jwt()
        self._secret = secret
        self.audience = audience
        self.leeway = leeway

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        token = bearer_token(connection)
        if token is None:
            return None
        try:
            claims = self._jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except self._jwt.InvalidTokenError:
            return None
        return Principal(id=str(claims["sub"]), claims=claims)


def create_token(secret: str, subject: str, *, ttl: float = 3600.0, **claims: Any) -> str:
    """A signed HS256 token for ``subject`` that expires in ``ttl`` seconds (for demos, tests)."""
    import time

    _check_secret(secret)
    jwt = _jwt()
    payload = {**claims, "sub": subject, "exp": int(time.time() + ttl)}
    return str(jwt.encode(payload, secret, algorithm="HS256"))
