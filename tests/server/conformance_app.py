"""The app the Socket.IO protocol test suite expects (socket.io-protocol `test-suite/`).

On connect to `/` or `/custom` it emits `auth` with the handshake's auth payload;
`message` is echoed back as `message-back`; `message-with-ack` acks its arguments.
Written with the plain python-socketio API, as any user's app would be.
"""

from __future__ import annotations

from typing import Any

import socketio

NAMESPACES = ("/", "/custom")
GREETING_PAUSE_SECONDS = 0.02


def register(sio: socketio.AsyncServer) -> None:
    for namespace in NAMESPACES:
        _register_namespace(sio, namespace)


def _register_namespace(sio: socketio.AsyncServer, namespace: str) -> None:
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # The CONNECT packet goes out when this handler returns; `auth` must follow it.
        sio.start_background_task(greet, sid, auth or {})

    async def greet(sid: str, auth: Any) -> None:
        # The reference suite's client re-arms its listener a tick after each
        # message, so two frames arriving in one read lose the second; the Node
        # reference server writes them a tick apart. A short pause does the same.
        await sio.sleep(GREETING_PAUSE_SECONDS)
        await sio.emit("auth", auth, to=sid, namespace=namespace)

    async def message(sid: str, *args: Any) -> None:
        await sio.emit("message-back", args, to=sid, namespace=namespace)

    async def message_with_ack(sid: str, *args: Any) -> tuple[Any, ...]:
        return args

    sio.on("connect", connect, namespace=namespace)
    sio.on("message", message, namespace=namespace)
    sio.on("message-with-ack", message_with_ack, namespace=namespace)
