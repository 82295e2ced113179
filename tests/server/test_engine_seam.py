"""The one seam between python-socketio and iofleet's Engine.IO server.

python-socketio builds its Engine.IO server through `_engineio_server_class()`
(`server.sio.server.IofleetServer` returns `server.eio.engine.IofleetEngine`) and
then reaches it as `self.eio` / `self.server.eio`. These tests read python-socketio's
source at the locked version for every attribute it reaches that way and check
that iofleet's engine has each one, public; and that server/ uses python-engineio
for nothing but its packet and payload codecs (no class of it subclassed, no
private name of it called). An upgrade of python-socketio that reaches for
something new fails here, naming it.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import socketio
from socketio import async_manager, async_pubsub_manager, async_server, base_manager, base_server

from server.core.metrics import Metrics
from server.eio.engine import IofleetEngine
from server.eio.socket import EngineSocket
from server.settings import Settings
from server.sio.server import IofleetServer

SERVER_DIR = Path(__file__).parents[2] / "server"
# python-socketio's modules that an iofleet node runs (its admin UI instrumentation,
# `socketio.async_admin`, reaches for python-engineio's private methods and is not
# supported: iofleet has its own admin port and metrics).
SOCKETIO_MODULES = (async_server, base_server, base_manager, async_manager, async_pubsub_manager)
EIO_ATTRIBUTE = re.compile(r"\b(?:self|server|self\.server)\.eio\.(\w+)")


def engine_attributes_socketio_reaches() -> set[str]:
    names: set[str] = set()
    for module in SOCKETIO_MODULES:
        names.update(EIO_ATTRIBUTE.findall(inspect.getsource(module)))
    return names


def test_socketio_reaches_only_public_names_the_engine_has() -> None:
    reached = engine_attributes_socketio_reaches()
    # What this was read against (python-socketio 5.18): a sanity floor, so a
    # change in how the source is written cannot make this test pass vacuously.
    assert {"attach", "handle_request", "send", "send_packet", "generate_id"} <= reached
    engine = IofleetServer(Settings(auth="none"), Metrics()).eio
    assert type(engine) is IofleetEngine
    missing = sorted(name for name in reached if not hasattr(engine, name))
    assert not missing, f"python-socketio reaches for engine attributes we lack: {missing}"
    private = sorted(name for name in reached if name.startswith("_"))
    assert not private, f"python-socketio now reaches for private engine names: {private}"


def test_socketio_registers_the_three_engine_events() -> None:
    engine = IofleetServer(Settings(auth="none"), Metrics()).eio
    assert set(engine.handlers) == {"connect", "message", "disconnect"}
    assert engine.async_mode == "aiohttp"
    assert engine.reason.CLIENT_DISCONNECT == socketio.AsyncServer.reason.CLIENT_DISCONNECT


def test_no_engineio_class_underneath() -> None:
    for cls in (IofleetEngine, EngineSocket):
        foreign = [base for base in cls.__mro__ if base.__module__.startswith("engineio")]
        assert not foreign, f"{cls.__name__} still derives from {foreign}"


def test_server_uses_engineio_for_its_codecs_alone() -> None:
    """server/ imports only `engineio.packet` and `engineio.payload`, and uses no
    private name of either."""
    for path in sorted(SERVER_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                assert not any(n.split(".")[0] == "engineio" for n in names), (
                    f"{path}: imports {names}"
                )
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engineio"):
                assert node.module == "engineio", f"{path}: imports from {node.module}"
                for alias in node.names:
                    assert alias.name in ("packet", "payload"), f"{path}: imports {alias.name}"
                    aliases.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and isinstance(node.value, ast.Attribute | ast.Name)
                and ast.unparse(node.value).split(".")[0] in aliases
            ):
                raise AssertionError(f"{path}:{node.lineno}: private {ast.unparse(node)}")
