"""Python handle on tests/js/driver.mjs: the official socket.io-client under Node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

DRIVER = pathlib.Path(__file__).resolve().parents[1] / "js" / "driver.mjs"

Message = dict[str, Any]


class JsClients:
    """Many named official JS clients in one Node process.

    Every line the driver prints is kept in `messages`; waits scan that log, so
    nothing is lost between a command and the wait that follows it.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._next_ack = 0

    async def start(self) -> JsClients:
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=DRIVER.parents[2],
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda m: m.get("type") == "ready", timeout=20)
        return self

    async def stop(self) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            try:
                await self._send({"op": "exit"})
                await asyncio.wait_for(self._process.wait(), 5)
            except (TimeoutError, ConnectionError):
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
        self._process = None

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            self.messages.append(json.loads(line))
            self._changed.set()

    async def _send(self, command: Message) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")
        await self._process.stdin.drain()

    async def open(self, client: str, url: str, **opts: Any) -> None:
        """Open a client; opts are socket.io-client options (auth, transports, ...)."""
        await self._send({"op": "open", "client": client, "url": url, "opts": opts})

    async def emit(self, client: str, event: str, data: Any = None) -> None:
        await self._send({"op": "emit", "client": client, "event": event, "data": data})

    async def send_call(self, client: str, event: str, data: Any = None) -> int:
        """Emit with an acknowledgement, without waiting for it: the ack's id (its
        message is `{"type": "ack", "id": ...}` in `messages`)."""
        self._next_ack += 1
        ack_id = self._next_ack
        await self._send(
            {"op": "emit", "client": client, "event": event, "data": data, "ack": ack_id}
        )
        return ack_id

    async def call(self, client: str, event: str, data: Any = None, timeout: float = 10) -> Any:
        """Emit with an acknowledgement and return the server's ack payload."""
        ack_id = await self.send_call(client, event, data)
        reply = await self.wait_for(
            lambda m: m.get("type") == "ack" and m.get("id") == ack_id, timeout=timeout
        )
        if reply["error"]:
            raise TimeoutError(f"{client}: no ack for {event}: {reply['error']}")
        return reply["response"]

    async def drop(self, client: str, url: str | None = None) -> None:
        """Drop the client's transport (it reconnects by itself), to `url` if given."""
        await self._send({"op": "drop", "client": client, "url": url})

    async def retarget(self, client: str, url: str) -> None:
        """Make the client's next reconnect go to `url`."""
        await self._send({"op": "retarget", "client": client, "url": url})

    async def session(
        self, client: str, pid: str | None = None, offset: str | None = None
    ) -> Message:
        """The client's recovery session {pid, offset}, after setting what is given."""
        mark = len(self.messages)
        await self._send({"op": "session", "client": client, "pid": pid, "offset": offset})
        return await self.wait_client(client, "session", start=mark)

    async def close(self, client: str) -> None:
        await self._send({"op": "close", "client": client})

    def seen(self, client: str, kind: str, event: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages
            if m.get("client") == client
            and m.get("type") == kind
            and (event is None or m.get("event") == event)
        ]

    async def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 10, start: int = 0
    ) -> Message:
        """Wait for the first message (from index `start`) that matches."""
        deadline = asyncio.get_running_loop().time() + timeout
        index = start
        while True:
            while index < len(self.messages):
                if predicate(self.messages[index]):
                    return self.messages[index]
                index += 1
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message in {timeout}s; last: {self.messages[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_client(
        self, client: str, kind: str, timeout: float = 10, start: int = 0
    ) -> Message:
        return await self.wait_for(
            lambda m: m.get("client") == client and m.get("type") == kind, timeout, start
        )
