"""A trivial Socket.IO echo sink, to measure the load generator itself.

`python -m iofleet.loadtest.sink --port 8011` accepts Engine.IO v4 WebSocket
connections on 127.0.0.1, admits every Socket.IO connect, answers every ack
request with `{ok: true}` and sends each event straight back to its sender (one
delivery). It does far less work per message than a real server, so a
generator process pointed at it shows its own ceiling. Not a server: no auth,
no rooms, loopback only.
"""

from __future__ import annotations

import argparse

from aiohttp import WSMsgType, web

OPEN = '0{"sid":"sink","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


async def socket_io(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    await ws.send_str(OPEN)
    async for message in ws:
        if message.type != WSMsgType.TEXT:
            continue
        data: str = message.data
        if data.startswith("40"):
            await ws.send_str('40{"sid":"sink"}')
        elif data.startswith("42"):
            body = data.find("[")
            if body > 2:  # an ack id: answer it
                await ws.send_str(f'43{data[2:body]}[{{"ok":true}}]')
            await ws.send_str("42" + data[body:])
        elif data == "3":
            continue
        elif data.startswith("41"):
            break
    return ws


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/socket.io/", socket_io)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
