"""Child processes of the local fleet: start with a log file, wait until they answer, stop by PID.

Everything here is bounded in time; nothing looks processes up by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StartError(RuntimeError):
    """A process exited, or did not answer, while starting."""


# Listening ports come from below the kernel's ephemeral range (Linux default
# 32768-60999). A port the kernel hands out for `bind(0)` is one it may hand to the
# next outgoing connection too, and a test run opens thousands; a server started a
# moment later then fails to bind. Ports below the range are only ever taken by
# listeners like ours, and each is checked free before it is returned.
LISTEN_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on now, outside the ephemeral range."""
    for port in random.sample(LISTEN_PORTS, 64):
        if port_free(port, host):
            return port
    with socket.socket() as sock:  # the range is crowded: let the kernel choose
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` now. SO_REUSEADDR, as servers and
    HAProxy set it: old connections in TIME_WAIT do not count, a listener does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout+stderr appended to `log_path`.

    Each child gets its own session: a Ctrl-C in the terminal reaches only `iofleet up`,
    which then stops the children in order (balancer, servers, Redis).
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def wait_until(
    check: Callable[[], bool],
    within: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll `check` until true; fail early if `process` exits meanwhile."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StartError(f"{what} exited with {process.returncode}{_tail(log_path)}")
        if check():
            return
        time.sleep(0.1)
    raise StartError(f"{what} did not answer within {within:.0f}s{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log_path}:\n" + "\n".join(text)


def tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_status(
    url: str,
    within: float = 2.0,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> int:
    """Status of one request, 0 when nothing answered."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=within) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, TimeoutError):
        return 0


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def pid_command(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop_pid(
    pid: int,
    grace: float = 10.0,
    first: signal.Signals = signal.SIGTERM,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Send `first`, wait up to `grace` seconds, then SIGKILL. Reaps our own children."""
    if not pid_alive(pid):
        _reap(process)
        return
    try:
        os.kill(pid, first)
    except ProcessLookupError:
        _reap(process)
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait(5)
    else:
        end = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)


def _reap(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.poll()
