"""JWT checks for the handshake, and short-lived guest tokens."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from server.settings import Settings

# Clock skew tolerated between the token issuer and this node.
LEEWAY_SECONDS = 30


class AuthError(Exception):
    """A handshake's credentials were refused. The message is safe to show the client."""


class _WrongKey(AuthError):
    """The token was not signed by this key (another accepted key may have signed it)."""


@dataclass(frozen=True)
class Identity:
    user: str
    guest: bool = False


def token_from_handshake(auth: object, environ: Mapping[str, Any]) -> str | None:
    """The socket.io v4 `auth: {token}` payload first, then `Authorization: Bearer`."""
    if isinstance(auth, Mapping):
        token = auth.get("token")
        if isinstance(token, str) and token:
            return token
    header = environ.get("HTTP_AUTHORIZATION", "")
    if isinstance(header, str) and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


class TokenVerifier:
    """Checks a handshake's JWT against the current key and, during a rotation window,
    the previous one (`IOFLEET_JWT_SECRET_PREVIOUS` / `IOFLEET_JWT_PUBLIC_KEY_PREVIOUS`):
    a token signed by either verifies, the current key tried first."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth == "jwt"
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        candidates = [
            ("HS256", settings.jwt_secret),
            ("RS256", settings.jwt_public_key),
            ("HS256", settings.jwt_secret_previous),
            ("RS256", settings.jwt_public_key_previous),
        ]
        self._keys = [(alg, key.get_secret_value()) for alg, key in candidates if key is not None]

    def verify(self, token: str | None) -> Identity:
        if not self.enabled:
            return Identity(user="anonymous")
        if not token:
            raise AuthError("auth: token missing")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("auth: malformed token") from None
        keys = [k for alg, k in self._keys if alg == header.get("alg")]
        if not keys:
            raise AuthError(f"auth: algorithm {header.get('alg')!r} not accepted")
        # PyJWT checks the signature before any claim, so a key that did not sign the
        # token fails with InvalidSignatureError and the next one is tried.
        for key in keys[:-1]:
            try:
                return self._decode(token, key, str(header["alg"]))
            except _WrongKey:
                continue
        return self._decode(token, keys[-1], str(header["alg"]))

    def _decode(self, token: str, key: str, alg: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("auth: token expired") from None
        except jwt.InvalidSignatureError:
            raise _WrongKey("auth: bad signature") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthError(f"auth: token has no {error.claim!r} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as error:
            raise AuthError(f"auth: {error}") from None
        except jwt.InvalidTokenError:
            raise AuthError("auth: malformed token") from None
        user = claims["sub"]
        if not isinstance(user, str) or not user:
            raise AuthError("auth: 'sub' must be a non-empty string")
        return Identity(user=user, guest=bool(claims.get("guest", False)))


class GuestTokenIssuer:
    """Signs short-lived tokens for anonymous visitors (the demo page, trials)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.jwt_secret is not None  # Settings validation guarantees it
        self._secret = settings.jwt_secret.get_secret_value()
        self.ttl = settings.guest_token_ttl
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer

    def issue(self) -> tuple[str, str]:
        """Return (token, user id)."""
        user = f"guest-{secrets.token_hex(6)}"
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + self.ttl, "guest": True}
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self._secret, algorithm="HS256"), user
