"""A running nginx OSS as a balancer whose pool changes: rewrite its config, reload gracefully.

nginx OSS has no runtime API, so every change (a server in or out of the pool, a server
held out for a drain, one found not ready) renders a new config from `NginxOptions`,
checks it with `nginx -t`, and reloads: old workers finish their requests and keep
their WebSockets (up to `worker_shutdown_timeout`), new ones serve the new pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from iofleet.render import Backend, NginxOptions, render_nginx


class NginxBalancer:
    """The config of one running nginx, changed only through these methods.

    `nginx_args` locate the running nginx (`-p`, `-c`, `-e`), so `nginx <args> -t` and
    `nginx <args> -s reload` act on that instance. A server is `down` in the pool (no new
    sessions; its sessions still reach it through the sid map) while it is held out by
    hand (`take_out`) or found not ready (`set_not_ready`).
    """

    def __init__(self, options: NginxOptions, config_path: Path, nginx_args: list[str]) -> None:
        self.options = options
        self.config_path = config_path
        self.nginx_args = nginx_args
        self.held: frozenset[str] = options.down
        self.not_ready: frozenset[str] = frozenset()

    async def set_backends(
        self, backends: tuple[Backend, ...], not_ready: frozenset[str] | None = None
    ) -> bool:
        """The pool is exactly `backends`; True when that changed the config (and reloaded).

        A server that stays keeps its held/maintenance marks; one that goes loses them.
        `not_ready`, when given, replaces the readiness marks in the same reload.
        """
        names = {b.name for b in backends}
        self.held &= names
        self.not_ready = (self.not_ready if not_ready is None else not_ready) & names
        options = dataclasses.replace(
            self.options,
            backends=backends,
            down=self.held | self.not_ready,
            maint=self.options.maint & names,
        )
        changed = options != self.options
        await self.apply(options)
        return changed

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


def _retired(pid: int) -> bool:
    """An nginx worker that has exited or retitled itself `... is shutting down`."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return not title or b"shutting down" in title
