"""IOFLEET_HANDLERS apps get every guard of the server without knowing about it."""

from __future__ import annotations

import urllib.request

from tests.support.jsclient import JsClients
from tests.support.procs import make_token


async def test_custom_handlers_get_limits_metrics_and_error_acks(
    start_server, js: JsClients
) -> None:
    server = start_server(
        "custom",
        IOFLEET_HANDLERS="tests.server.sample_handlers:register",
        IOFLEET_RATE_LIMIT="3",
        IOFLEET_RATE_LIMIT_BURST="3",
    )
    await js.open("c", server.url, auth={"token": make_token("c")})
    await js.wait_client("c", "connect")
    assert await js.call("c", "echo", {"n": 1}) == {"echo": {"n": 1}}
    assert await js.call("c", "boom") == {"ok": False, "error": "internal error"}
    assert await js.call("c", "echo", 3) == {"echo": 3}
    limited = await js.call("c", "echo", 4)
    assert limited == {"ok": False, "error": "rate limited", "event": "echo"}

    entries = server.log_entries()
    errors = [e for e in entries if e.get("event") == "handler.error"]
    assert len(errors) == 1 and errors[0]["handler"] == "boom"
    with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'iofleet_messages_received_total{event="echo"} 3.0' in text
    assert 'iofleet_messages_received_total{event="boom"} 1.0' in text
    assert 'iofleet_event_handler_seconds_count{event="echo"} 2.0' in text
    assert 'iofleet_events_rejected_total{reason="rate_limit"} 1.0' in text
