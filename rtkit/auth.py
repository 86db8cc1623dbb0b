"""Authentication at connect: turning a handshake into a principal, or refusing it.

An endpoint with an ``authenticator`` calls it before ``on_connect``; ``None`` refuses the
socket before accept (HTTP 403), and so does ``HandshakeRefusedError``, with its reason.
Credentials are looked for, in order, in the ``Authorization: Bearer`` header, the
``Sec-WebSocket-Protocol`` pair that browsers can send (``new WebSocket(url, ["rtkit.bearer",
token])``), a ``token`` cookie and a ``?token=`` query parameter; ``bearer_token`` does the
looking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from starlette.requests import HTTPConnection

from rtkit.errors import ConfigurationError, HandshakeRefusedError

__all__ = [
    "BEARER_SUBPROTOCOL",
    "Authenticator",
    "JWTAuthenticator",
    "Principal",
    "bearer_token",
    "create_token",
    "same_origin",
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
    return _find_token(connection, cookie=cookie, query=query)[0]


def _find_token(
    connection: HTTPConnection, *, cookie: str = "token", query: str = "token"
) -> tuple[str | None, str]:
    """The bearer token and where it was found (``header``, ``subprotocol``, ``cookie``, ``query``)."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), "header"
    offered = list(connection.scope.get("subprotocols", ()))
    if BEARER_SUBPROTOCOL in offered:
        position = offered.index(BEARER_SUBPROTOCOL)
        if position + 1 < len(offered):
            return str(offered[position + 1]), "subprotocol"
    from_cookie = connection.cookies.get(cookie)
    if from_cookie:
        return from_cookie, "cookie"
    return connection.query_params.get(query) or None, "query"


def same_origin(connection: HTTPConnection, allowed: Collection[str] | None = None) -> bool:
    """Whether the handshake's ``Origin`` may use credentials the browser adds by itself.

    True without an ``Origin`` header (not a browser page), for an origin in ``allowed``, or,
    when ``allowed`` is None, for one whose host and port are the request's own ``Host``.
    """
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    if allowed is not None:
        return origin.rstrip("/").lower() in {entry.rstrip("/").lower() for entry in allowed}
    host = connection.headers.get("host")
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class Authenticator(ABC):
    """Turns a handshake into a ``Principal``; subclass it for your own scheme."""

    @abstractmethod
    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        """The principal the handshake proves, or None to refuse the socket (HTTP 403).

        Raise ``HandshakeRefusedError("why")`` instead of returning None to tell the client
        and the log why (``"token expired"``); never put the credential itself in the reason.
        """


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
        raise ConfigurationError(
            "JWT authentication needs PyJWT, a dependency of rtkit: pip install 'pyjwt>=2.8'"
        ) from exc
    return jwt


class JWTAuthenticator(Authenticator):
    """Accepts HS256 JWT bearer tokens signed with ``secret`` whose ``exp`` has not passed.

    Tokens must carry ``sub`` and ``exp``; PyJWT (a dependency of rtkit) checks them.

    A token from a cookie is one the browser sends by itself, whichever page opens the
    socket: it is taken only from a page of the server's own origin (or of
    ``allowed_origins``), so that another site cannot act as the user (cross-site WebSocket
    hijacking). Tokens from the header, the subprotocol pair or the query are sent by the
    page's own code, and taken from any origin.

    Args:
        secret: the shared HMAC secret.
        audience: when set, the ``aud`` claim must match.
        leeway: seconds of clock skew tolerated on ``exp``.
        allowed_origins: origins (``https://app.example``) whose pages may authenticate with
            the cookie; None for the server's own origin only (``Origin`` matching ``Host``).
    """

    def __init__(
        self,
        secret: str,
        *,
        audience: str | None = None,
        leeway: float = 0.0,
        allowed_origins: Collection[str] | None = None,
    ) -> None:
        _check_secret(secret)
        self._jwt = _jwt()
        self._secret = secret
        self.audience = audience
        self.leeway = leeway
        self.allowed_origins = frozenset(allowed_origins) if allowed_origins is not None else None

    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        token, source = _find_token(connection)
        if token is None:
            raise HandshakeRefusedError("missing token")
        if source == "cookie" and not same_origin(connection, self.allowed_origins):
            raise HandshakeRefusedError("a token cookie is not taken from another site's page")
        try:
            claims = self._jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except self._jwt.ExpiredSignatureError:
            raise HandshakeRefusedError("token expired") from None
        except self._jwt.InvalidTokenError:
            raise HandshakeRefusedError("invalid token") from None
        return Principal(id=str(claims["sub"]), claims=claims)


def create_token(secret: str, subject: str, *, ttl: float = 3600.0, **claims: Any) -> str:
    """A signed HS256 token for ``subject`` that expires in ``ttl`` seconds (for demos, tests)."""
    import time

    _check_secret(secret)
    jwt = _jwt()
    payload = {**claims, "sub": subject, "exp": int(time.time() + ttl)}
    return str(jwt.encode(payload, secret, algorithm="HS256"))
