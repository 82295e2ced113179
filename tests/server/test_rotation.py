"""Secret rotation without downtime (issue 24): during a rotation window a server accepts
the previous JWT key and admin token besides the current ones; once the previous value is
unset, what it signed is refused. Real server processes, stock python-socketio clients,
tokens signed with PyJWT."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.settings import Settings
from server.sio.auth import AuthError, TokenVerifier
from tests.server.conftest import PyClient
from tests.support.procs import TEST_ADMIN_TOKEN, TEST_JWT_SECRET, ServerProcess, make_token

NEW_SECRET = "rotated-secret-for-loopback-only-9876543210"
OLD_ADMIN_TOKEN = "previous-admin-token-for-loopback"


async def refusal(url: str, token: str) -> object:
    """The connect_error a stock client gets for `token`."""
    client = socketio.AsyncClient(reconnection=False)
    reasons: list[object] = []
    client.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return reasons[0]


async def test_tokens_signed_by_either_key_connect_during_the_window(start_server) -> None:
    server = start_server(
        "rotating", IOFLEET_JWT_SECRET=NEW_SECRET, IOFLEET_JWT_SECRET_PREVIOUS=TEST_JWT_SECRET
    )
    for user, secret in (("signed-new", NEW_SECRET), ("signed-old", TEST_JWT_SECRET)):
        client = PyClient()
        await client.sio.connect(
            server.url, auth={"token": make_token(user, secret=secret)}, transports=["websocket"]
        )
        await client.wait(lambda c=client: c.nodes)
        assert client.nodes == ["rotating"]
        await client.sio.disconnect()
    # A key that is neither is still a bad signature, and expiry still counts for the
    # previous key's tokens.
    forged = make_token("forger", secret="neither-key-0123456789abcdefghijkl")
    assert await refusal(server.url, forged) == {"message": "auth: bad signature"}
    late = make_token("late", secret=TEST_JWT_SECRET, ttl=-120)
    assert await refusal(server.url, late) == {"message": "auth: token expired"}


async def test_the_previous_key_is_refused_once_unset(start_server) -> None:
    server = start_server("rotated", IOFLEET_JWT_SECRET=NEW_SECRET)
    old = make_token("signed-old", secret=TEST_JWT_SECRET)
    assert await refusal(server.url, old) == {"message": "auth: bad signature"}


def post_drain(server: ServerProcess, token: str) -> int:
    request = urllib.request.Request(
        f"{server.admin_url}/admin/drain",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("token", [TEST_ADMIN_TOKEN, OLD_ADMIN_TOKEN], ids=["current", "previous"])
async def test_either_admin_token_drains_during_the_window(start_server, token: str) -> None:
    server = start_server(
        "admin-rotating",
        IOFLEET_ADMIN_TOKEN_PREVIOUS=OLD_ADMIN_TOKEN,
        IOFLEET_DRAIN_DELAY="0",
        IOFLEET_DRAIN_SECONDS="0",
    )
    assert await asyncio.to_thread(post_drain, server, "neither-token") == 401
    assert await asyncio.to_thread(post_drain, server, token) in (200, 202)
    assert await asyncio.to_thread(server.wait_exit, 10) == 0


async def test_the_previous_admin_token_is_refused_once_unset(start_server) -> None:
    server = start_server("admin-rotated")
    assert await asyncio.to_thread(post_drain, server, OLD_ADMIN_TOKEN) == 401
    assert server.process is not None and server.process.poll() is None


def rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def test_rs256_rotation_and_a_switch_from_hs256() -> None:
    old_key, old_public = rsa_pair()
    new_key, new_public = rsa_pair()
    claims = {"sub": "u", "exp": time.time() + 60}
    rotating = TokenVerifier(
        Settings(jwt_public_key=new_public, jwt_public_key_previous=old_public)  # type: ignore[call-arg]
    )
    for key in (new_key, old_key):
        assert rotating.verify(jwt.encode(claims, key, algorithm="RS256")).user == "u"
    rotated = TokenVerifier(Settings(jwt_public_key=new_public))  # type: ignore[call-arg]
    with pytest.raises(AuthError, match=r"^auth: bad signature$"):
        rotated.verify(jwt.encode(claims, old_key, algorithm="RS256"))
    # From an HS256 secret to an RS256 issuer: both kinds verify during the window.
    switching = TokenVerifier(
        Settings(jwt_public_key=new_public, jwt_secret_previous=TEST_JWT_SECRET)  # type: ignore[call-arg]
    )
    assert switching.verify(jwt.encode(claims, new_key, algorithm="RS256")).user == "u"
    assert switching.verify(jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")).user == "u"


def test_a_previous_value_never_stands_alone() -> None:
    with pytest.raises(ValueError, match="IOFLEET_ADMIN_TOKEN_PREVIOUS needs IOFLEET_ADMIN_TOKEN"):
        Settings(jwt_secret=NEW_SECRET, admin_token_previous=OLD_ADMIN_TOKEN)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="needs IOFLEET_JWT_SECRET or IOFLEET_JWT_PUBLIC_KEY"):
        Settings(jwt_secret_previous=TEST_JWT_SECRET)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings(jwt_secret=NEW_SECRET, jwt_secret_previous="short")  # type: ignore[call-arg]
