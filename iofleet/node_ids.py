"""Backends for `iofleet render`, named by the node ids the servers really run with.

nginx's sticky routing matches the node id inside each Engine.IO sid against the
backend names, so a name that is not the server's `IOFLEET_NODE_ID` silently breaks
stickiness. When a backend has an admin port, its `/admin/status` says its node id:
an unnamed backend takes it, a named one must agree with it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from iofleet.render import Backend

NodeIdLookup = Callable[[Backend], str]


class NodeIdError(ValueError):
    """A backend's node id could not be read, or disagrees with the one given."""


def node_id_from_status(backend: Backend, within: float = 3.0) -> str:
    """The `node_id` a server's `/admin/status` reports."""
    host = f"[{backend.host}]" if ":" in backend.host else backend.host
    url = f"http://{host}:{backend.admin_port}/admin/status"
    try:
        with urllib.request.urlopen(url, timeout=within) as response:
            node_id = json.loads(response.read())["node_id"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise NodeIdError(
            f"cannot read the node id of {backend.address} from {url} ({reason});"
            " name it (NODE_ID=HOST:PORT) and pass --no-ask-servers"
        ) from None
    if not isinstance(node_id, str):
        raise NodeIdError(f"{url} answered a node_id that is not a string: {node_id!r}")
    return node_id


def resolve_backends(
    specs: Sequence[str], *, ask_servers: bool = True, lookup: NodeIdLookup = node_id_from_status
) -> tuple[Backend, ...]:
    """Parse `[NODE_ID=]HOST:PORT[:ADMIN]` specs; with `ask_servers`, name them as the servers do.

    Unnamed backends without an admin port (or without asking) are `node1`, `node2`, ...
    by position.
    """
    backends: list[Backend] = []
    for position, spec in enumerate(specs, start=1):
        backend = Backend.parse(spec, f"node{position}")
        named = "=" in spec
        if ask_servers and backend.admin_port is not None:
            actual = lookup(backend)
            if named and actual != backend.name:
                raise NodeIdError(
                    f"backend {backend.address} runs node id {actual!r}, not {backend.name!r}"
                )
            backend = Backend(actual, backend.host, backend.port, backend.admin_port)
        backends.append(backend)
    return tuple(backends)
