"""HAProxy's runtime API: change a running HAProxy's servers without a reload.

Spoken with plain asyncio over the admin socket (`stats socket`, unix path or
`ipv4@HOST:PORT`). The local fleet's drain and the autoscaler's local backend use it:
`add_server` + `enable` to bring a server in, `drain` to stop new sessions reaching
it, `remove` once it is empty. HAProxy 2.6 adds and deletes servers this way
(`add server`, `del server`), so nothing here reloads HAProxy.
"""

from __future__ import annotations

import asyncio
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ServerAdminState = Literal["ready", "drain", "maint"]

# `srv_admin_state` bits of `show servers state` (HAProxy's SRV_ADMF_*).
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20
_ADMIN_DRAIN = 0x08 | 0x10


class RuntimeApiError(RuntimeError):
    """HAProxy answered a runtime API command with an error."""


@dataclass(frozen=True)
class ServerState:
    """One server line of `show servers state`."""

    backend: str
    name: str
    address: str
    port: int
    op_state: int
    """0 stopped, 1 starting, 2 running, 3 stopping (health checks decide)."""
    admin_state: int

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & _ADMIN_DRAIN)

    @property
    def in_maintenance(self) -> bool:
        return bool(self.admin_state & _ADMIN_MAINT)

    @property
    def up(self) -> bool:
        return self.op_state == 2

    @property
    def in_rotation(self) -> bool:
        """Up and taking new sessions. A slot declared `disabled` keeps its configured-
        maintenance bit (0x04) after `set server ... state ready`; only the runtime bits
        (forced maintenance or drain, or a resolution failure) keep sessions off it."""
        return self.up and not self.admin_state & (0x01 | 0x02 | 0x20 | _ADMIN_DRAIN)


class HaproxyRuntime:
    """Client of HAProxy's runtime API on a unix socket path, or `[ipv4@]HOST:PORT` (TCP)."""

    def __init__(self, address: str | Path, timeout: float = 5.0) -> None:
        self.address = str(address)
        self.timeout = timeout

    async def command(self, line: str) -> str:
        """Send one command; HAProxy answers and closes (non-interactive mode)."""
        if "\n" in line:
            raise ValueError("one command per call")
        async with asyncio.timeout(self.timeout):
            host, _, port = self.address.removeprefix("ipv4@").rpartition(":")
            if host and port.isdigit():  # `stats socket ipv4@HOST:PORT`
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            else:
                reader, writer = await asyncio.open_unix_connection(self.address)
            try:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                answer = (await reader.read()).decode()
            finally:
                writer.close()
        # Errors come back as text; these prefixes are HAProxy's own wording.
        if answer.startswith(("Unknown command", "No such", "Require ", "Permission denied")):
            raise RuntimeApiError(f"{line!r}: {answer.strip()}")
        return answer

    async def set_state(self, backend: str, server: str, state: ServerAdminState) -> None:
        answer = await self.command(f"set server {backend}/{server} state {state}")
        if answer.strip():
            raise RuntimeApiError(f"set server {backend}/{server} state {state}: {answer.strip()}")

    async def show_stat(self) -> list[dict[str, str]]:
        """`show stat` as rows keyed by the CSV header (`pxname`, `svname`, `scur`, ...)."""
        text = await self.command("show stat")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines or not lines[0].startswith("# "):
            raise RuntimeApiError(f"unexpected show stat answer: {text[:200]!r}")
        header = lines[0][2:].rstrip(",").split(",")
        return [dict(zip(header, row, strict=False)) for row in csv.reader(lines[1:])]

    async def servers_state(self, backend: str | None = None) -> list[ServerState]:
        text = await self.command(f"show servers state {backend or ''}".strip())
        lines = text.splitlines()
        header = next((ln[2:].split() for ln in lines if ln.startswith("# ")), None)
        if header is None:
            raise RuntimeApiError(f"unexpected show servers state answer: {text[:200]!r}")
        states = []
        for line in lines:
            if not line.strip() or line.startswith("#") or len(line.split()) < len(header) // 2:
                continue  # the version line, comments
            row = dict(zip(header, line.split(), strict=False))
            states.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    address=row["srv_addr"],
                    port=int(row.get("srv_port", "0")),
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                )
            )
        return states

    async def sessions(self, backend: str, server: str) -> int:
        """Current sessions on one server (`scur`): open WebSockets and in-flight polls."""
        for row in await self.show_stat():
            if row.get("pxname") == backend and row.get("svname") == server:
                return int(row.get("scur") or 0)
        raise RuntimeApiError(f"no server {backend}/{server} in show stat")

    async def wait_sessions_zero(
        self, backend: str, server: str, within: float, quiet: float = 1.0, interval: float = 0.2
    ) -> bool:
        """Wait until the server has had no session for `quiet` seconds; False on timeout.

        Long-polling clients only hold a session while a request is in flight, hence
        the quiet period rather than a single zero reading.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        zero_since: float | None = None
        while loop.time() < deadline:
            if await self.sessions(backend, server) == 0:
                zero_since = zero_since if zero_since is not None else loop.time()
                if loop.time() - zero_since >= quiet:
                    return True
            else:
                zero_since = None
            await asyncio.sleep(interval)
        return False

    async def add_server(
        self,
        backend: str,
        name: str,
        host: str,
        port: int,
        *,
        check_port: int | None = None,
    ) -> None:
        """Add a server to a running backend (`add server`), health-checked, in maintenance.

        A dynamic server inherits nothing from `default-server`, so the check cadence the
        template gives every static server is spelled out here. `enable` puts it in
        rotation once it is ready. HAProxy 2.6 refuses a `cookie` on a dynamic server and
        no `use-server` rule names it: its WebSocket sessions are fine, but polling
        sessions are sticky to it only where the backend derives cookies (`cookie ...
        dynamic`); otherwise reload with the server in the config file.
        """
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        words = [f"add server {backend}/{name} {address}", "check inter 1s fall 2 rise 2"]
        if check_port is not None:
            words.append(f"port {check_port}")
        await self._expect(" ".join(words), "New server registered.")
        await self._expect(f"enable health {backend}/{name}", "")

    async def fill_slot(
        self, backend: str, name: str, host: str, port: int, *, check_port: int | None = None
    ) -> None:
        """Point a spare slot of the config (`HaproxyOptions.spare_slots`) at a server.

        The slot keeps its cookie and sid rule, so polling sessions stay sticky; it stays
        in maintenance until `enable`. `free_slot` hands it back after a drain.
        """
        answer = await self.command(f"set server {backend}/{name} addr {host} port {port}")
        if "changed" not in answer and "no need to change" not in answer:
            raise RuntimeApiError(f"set server {backend}/{name} addr: {answer.strip()}")
        if check_port is not None:
            await self._expect(f"set server {backend}/{name} check-port {check_port}", "")
        await self._expect(f"enable health {backend}/{name}", "")

    async def free_slot(self, backend: str, name: str) -> None:
        """Maintenance and no sessions left: the slot is spare again."""
        await self.set_state(backend, name, "maint")
        await self._expect(f"shutdown sessions server {backend}/{name}", "")

    async def enable(self, backend: str, name: str) -> None:
        """Into rotation: new sessions may go to this server while its check passes."""
        await self.set_state(backend, name, "ready")

    async def drain(self, backend: str, name: str) -> None:
        """No new sessions; sessions on it keep reaching it (cookie, sid) until they end."""
        await self.set_state(backend, name, "drain")

    async def remove(self, backend: str, name: str) -> None:
        """Take a server out for good (`del server`): maintenance, cut what is left, delete.

        For servers `add_server` added. One from the config file is named by its sid
        `use-server` rule, and HAProxy refuses to delete it: leave that one in `maint`.
        Call it once the server has drained; a session still open is cut here.
        """
        await self.set_state(backend, name, "maint")
        await self._expect(f"shutdown sessions server {backend}/{name}", "")
        # HAProxy deletes a server only once nothing references it; the cut sessions
        # go away within a moment.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            answer = (await self.command(f"del server {backend}/{name}")).strip()
            if answer == "Server deleted.":
                return
            if loop.time() > deadline:
                raise RuntimeApiError(f"del server {backend}/{name}: {answer}")
            await asyncio.sleep(0.1)

    async def _expect(self, line: str, expected: str) -> None:
        answer = (await self.command(line)).strip()
        if answer != expected:
            raise RuntimeApiError(f"{line}: {answer}")
