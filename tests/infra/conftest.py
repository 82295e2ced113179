"""Pulumi's mocks drive their own event loop: these tests run in their own pytest call
with `-p no:asyncio` (see the Makefile's test-infra), and get a fresh loop here."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(scope="session", autouse=True)
def pulumi_event_loop() -> None:
    """Pulumi's sync helpers use the thread's current loop; give it one of its own."""
    asyncio.set_event_loop(asyncio.new_event_loop())
