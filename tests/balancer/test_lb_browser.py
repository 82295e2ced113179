"""The demo page in headless Chromium through HAProxy: chat across nodes, and across a drain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iofleet.drain import drain_server
from tests.support.cdp import Chromium, Page
from tests.support.cluster import NODES, SERVER_ENV, start_balancer
from tests.support.procs import TEST_ADMIN_TOKEN, ServerProcess

JOINED = "document.body.dataset.joined === 'yes' && document.body.dataset.node"


@pytest.fixture
def server_env() -> dict[str, str]:
    # As `iofleet up` runs them: guest tokens for the page, same-origin only (no CORS list).
    return {**SERVER_ENV, "IOFLEET_GUEST_TOKENS": "true", "IOFLEET_CORS_ORIGINS": ""}


@pytest.fixture
async def chromium() -> AsyncIterator[Chromium]:
    browser = await Chromium().start()
    yield browser
    await browser.stop()


async def say(page: Page, text: str) -> None:
    await page.evaluate(
        f"document.getElementById('text').value = {text!r};"
        "document.getElementById('send').requestSubmit(); true"
    )


def heard(text: str) -> str:
    return f"document.getElementById('log').innerText.includes({text!r})"


async def test_demo_page_chats_across_nodes_and_a_drain(
    servers: list[ServerProcess], chromium: Chromium, tmp_path: Path
) -> None:
    balancer = await start_balancer("haproxy", servers, tmp_path)
    try:
        url = f"{balancer.url}/?room=browser"
        alice = await chromium.new_page(url)
        alice_node = await alice.wait_for(JOINED)
        bob = await chromium.new_page(url)
        bob_node = await bob.wait_for(JOINED)
        # Least connections puts the second tab on another node: the chat crosses Redis.
        assert {alice_node, bob_node} <= set(NODES)
        assert alice_node != bob_node
        assert await alice.evaluate("document.getElementById('node').textContent") == alice_node

        await say(alice, "hello from alice")
        await bob.wait_for(heard("hello from alice"), within=10)

        # Drain Alice's node: her tab reconnects elsewhere, rejoins, and stays in the chat.
        await balancer.runtime().set_state("iofleet_servers", alice_node, "drain")
        victim = next(s for s in servers if s.node_id == alice_node)
        await drain_server(victim.admin_url, TEST_ADMIN_TOKEN)
        await alice.wait_for(f"({JOINED}) && document.body.dataset.node !== {alice_node!r}")
        await say(bob, "still there alice?")
        await alice.wait_for(heard("still there alice?"), within=10)
        await say(alice, "yes, on another node")
        await bob.wait_for(heard("yes, on another node"), within=10)
    finally:
        balancer.stop()
