"""Fixtures every test folder shares."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.jsclient import JsClients


@pytest.fixture
async def js() -> AsyncIterator[JsClients]:
    """Official socket.io-client sockets under one Node process, stopped after the test."""
    clients = await JsClients().start()
    yield clients
    await clients.stop()
