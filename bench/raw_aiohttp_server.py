"""The floor for `bench/fanout_bench.py`: bare aiohttp WebSockets, no Socket.IO stack.

Speaks just what the load generator (`bench.raw_ws`) needs, by string matching:
the Engine.IO OPEN, the Socket.IO CONNECT, acks for `echo` and `room:join`, and
`chat:message` sent to every joined connection (`send_str` each) plus its ack.
No pings, no sessions, no rooms beyond one set: what an aiohttp WebSocket
connection costs by itself (its request handler task, parser, reader, writer),
so the benchmark can say how much of a Socket.IO server's figure is the
transport's floor. `python -m bench.raw_aiohttp_server PORT`.
"""

from __future__ import annotations

import argparse
import itertools
import time
from types import ModuleType

import orjson
from aiohttp import WSMsgType, web

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:
    uvloop = None

OPEN = '0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
# The generator sends events as `42<id>["<event>",<data>]`.
EVENT_PREFIX = "42"

joined: set[web.WebSocketResponse] = set()
ids = itertools.count()


async def serve(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(OPEN % next(ids))
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            await on_packet(ws, msg.data)
    finally:
        joined.discard(ws)
    return ws


async def on_packet(ws: web.WebSocketResponse, packet: str) -> None:
    if packet == "40":
        await ws.send_str('40{"sid":"s"}')
        return
    if not packet.startswith(EVENT_PREFIX):
        return
    bracket = packet.index("[")
    ack_id = packet[2:bracket]
    event, data = orjson.loads(packet[bracket:])
    if event == "echo":
        reply = data
    elif event == "room:join":
        joined.add(ws)
        reply = {"ok": True, "room": data["room"], "members": ["anonymous"]}
    elif event == "chat:message":
        payload = {"room": data["room"], "text": data["text"], "from": "anonymous"}
        payload["ts"] = int(time.time() * 1000)
        frame = "42" + orjson.dumps(["chat:message", payload]).decode()
        for member in list(joined):
            await member.send_str(frame)
        reply = {"ok": True}
    else:
        return
    if ack_id:
        await ws.send_str(f"43{ack_id}" + orjson.dumps([reply]).decode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    if uvloop is not None:  # the loop iofleet runs on, so the floor is comparable
        uvloop.install()
    app = web.Application()
    app.router.add_get("/socket.io/", serve)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
