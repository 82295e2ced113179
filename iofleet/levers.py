"""Drain levers: take a server out of a balancer without dropping its sessions.

HAProxy: its runtime API over the admin socket (`set server <be>/<srv> state
drain|ready|maint`, `show stat`, `show servers state`), spoken with plain asyncio.
nginx OSS has no runtime API: the lever rewrites the config with the server `down`
in the pool (its sessions still reach it through the sid map) and reloads gracefully.
The server's own drain (`POST /admin/drain`) closes the sessions; a lever only stops
new ones from arriving.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp

from iofleet.render import NginxOptions, render_nginx

log = logging.getLogger(__name__)

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


async def drain_server(
    admin_url: str, token: str, *, wait: bool = False, within: float = 120
) -> None:
    """Ask one server to drain itself (`POST /admin/drain`); `wait` blocks until it is done."""
    url = f"{admin_url.rstrip('/')}/admin/drain" + ("?wait=true" if wait else "")
    client_timeout = aiohttp.ClientTimeout(total=within)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as http,
        http.post(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        if response.status >= 300:
            raise RuntimeError(f"{url}: HTTP {response.status} {await response.text()}")


async def drain_haproxy_node(
    runtime: HaproxyRuntime,
    backend: str,
    server: str,
    *,
    admin_url: str,
    token: str,
    within: float = 120,
) -> bool:
    """The whole drain of one node behind HAProxy: lever, server drain, wait, maint.

    Order matters: HAProxy stops sending new sessions first, then the server closes
    its connections (clients reconnect through HAProxy to the others). True when the
    server's sessions reached zero within `within` seconds.
    """
    await runtime.set_state(backend, server, "drain")
    await drain_server(admin_url, token, wait=False)
    drained = await runtime.wait_sessions_zero(backend, server, within)
    await runtime.set_state(backend, server, "maint")
    return drained


class NginxLever:
    """Rewrites an nginx config with servers down/in maintenance and reloads gracefully.

    `nginx_args` are the arguments that locate the running nginx (`-p`, `-c`, `-e`),
    so `nginx <args> -t` and `nginx <args> -s reload` act on that instance. A server is
    down in the pool while it is held out by hand (`take_out`) or found not ready.
    """

    def __init__(self, options: NginxOptions, config_path: Path, nginx_args: list[str]) -> None:
        self.options = options
        self.config_path = config_path
        self.nginx_args = nginx_args
        self.held: frozenset[str] = options.down
        self.not_ready: frozenset[str] = frozenset()

    async def take_out(self, name: str) -> None:
        """Drain lever: no new sessions for `name`; its open sessions still reach it."""
        self.held |= {name}
        await self._apply_down()

    async def put_back(self, name: str) -> None:
        self.held -= {name}
        await self.apply(
            dataclasses.replace(
                self.options, down=self.held | self.not_ready, maint=self.options.maint - {name}
            )
        )

    async def remove(self, name: str) -> None:
        """Maintenance: `name` gets no traffic at all (after it has drained)."""
        await self.apply(dataclasses.replace(self.options, maint=self.options.maint | {name}))

    async def set_not_ready(self, names: frozenset[str]) -> bool:
        """Record readiness results; True when that changed the config."""
        self.not_ready = names
        return await self._apply_down()

    async def _apply_down(self) -> bool:
        down = self.held | self.not_ready
        if down == self.options.down:
            return False
        await self.apply(dataclasses.replace(self.options, down=down))
        return True

    async def apply(self, options: NginxOptions) -> None:
        """Write the config for `options`, check it, and reload; the old file stays on error."""
        if options == self.options:
            return
        candidate = self.config_path.with_suffix(".next")
        candidate.write_text(render_nginx(options))
        await self._nginx("-t", "-q", config=candidate)
        os.replace(candidate, self.config_path)
        old_workers = self.worker_pids()
        await self._nginx("-s", "reload")
        self.options = options
        await self._wait_new_workers(old_workers)

    def master_pid(self) -> int:
        return int(Path(self.options.pid_path).read_text().strip())

    def worker_pids(self) -> set[int]:
        """Children of the master; after a reload a fresh set serves the new config."""
        master = self.master_pid()
        children = Path(f"/proc/{master}/task/{master}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    async def _wait_new_workers(self, old: set[int], within: float = 10) -> None:
        # The reload signal returns at once. The new config is live once the master has
        # started new workers and every old one is gone or shutting down (then it accepts
        # nothing new and closes idle keep-alive connections).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if self.worker_pids() - old and all(_retired(pid) for pid in old):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"nginx did not finish reloading within {within}s")

    async def _nginx(self, *args: str, config: Path | None = None) -> None:
        command = ["nginx", *self._args_with_config(config), *args]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {output.decode().strip()}")

    def _args_with_config(self, config: Path | None) -> list[str]:
        if config is None:
            return self.nginx_args
        args = list(self.nginx_args)
        index = args.index("-c")
        args[index + 1] = str(config)
        return args

    def stop(self) -> None:
        """Graceful stop (SIGQUIT): workers finish their requests, then exit."""
        os.kill(self.master_pid(), signal.SIGQUIT)


def _retired(pid: int) -> bool:
    """An nginx worker that has exited or retitled itself `... is shutting down`."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return not title or b"shutting down" in title


Probe = Callable[[str], Awaitable[bool]]


async def readyz(admin_url: str) -> bool:
    """True when a server's /readyz answers 200."""
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{admin_url.rstrip('/')}/readyz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def sync_nginx_readiness(
    lever: NginxLever, admin_urls: Mapping[str, str], probe: Probe = readyz
) -> bool:
    """One round of the active health check nginx OSS lacks: mark not-ready servers down.

    Returns True when the config changed (and nginx was reloaded).
    """
    names = list(admin_urls)
    ready = await asyncio.gather(*(probe(admin_urls[name]) for name in names))
    not_ready = frozenset(n for n, ok in zip(names, ready, strict=True) if not ok)
    if not_ready != lever.not_ready:
        log.info("nginx: servers not ready: %s", ", ".join(sorted(not_ready)) or "none")
    return await lever.set_not_ready(not_ready)


async def watch_nginx_readiness(
    lever: NginxLever, admin_urls: Mapping[str, str], interval: float = 1.0
) -> None:
    """Run `sync_nginx_readiness` forever (cancel to stop); failures are logged, not fatal."""
    while True:
        try:
            await sync_nginx_readiness(lever, admin_urls)
        except (RuntimeError, OSError, TimeoutError) as error:
            log.warning("nginx readiness sync failed: %s", error)
        await asyncio.sleep(interval)
