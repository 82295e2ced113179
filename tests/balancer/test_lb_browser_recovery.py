"""The demo page works with connection state recovery on (as `iofleet up` and the
stacks run it): the same browser test as test_lb_browser.py, chat across nodes and
across a drain, with every event carrying its offset as an extra argument."""

from __future__ import annotations

import pytest

from tests.balancer.test_lb_browser import (  # noqa: F401  (fixture and test, run here again)
    chromium,
    test_demo_page_chats_across_nodes_and_a_drain,
)
from tests.support.cluster import SERVER_ENV


@pytest.fixture
def server_env() -> dict[str, str]:
    return {
        **SERVER_ENV,
        "IOFLEET_GUEST_TOKENS": "true",
        "IOFLEET_CORS_ORIGINS": "",
        "IOFLEET_RECOVERY": "true",
    }
