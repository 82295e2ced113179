"""Render the nginx and HAProxy templates (`iofleet/templates/`) from typed options.

The same templates serve a VM/EC2 deployment, the local fleet and the in-cluster
HAProxy (DNS discovery of a headless Service): everything that differs between
them is a field of `HaproxyOptions` / `NginxOptions`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import jinja2

from server.contract import (
    DRAIN_DELAY_SECONDS,
    DRAIN_SECONDS,
    NODE_ID_PATTERN,
    PING_INTERVAL_SECONDS,
    PING_TIMEOUT_SECONDS,
)

# Package data (the top-level haproxy/ and nginx/ are links to these directories), so an
# installed wheel renders exactly what a source checkout does.
HAPROXY_TEMPLATE = "haproxy/haproxy.cfg.j2"
NGINX_TEMPLATE = "nginx/nginx.conf.j2"

# Node ids are also nginx map keys, upstream names and HAProxy server names: the
# server's node-id rule keeps them safe there.
NODE_ID = NODE_ID_PATTERN

RELOAD_GRACE_S = max(60, math.ceil(DRAIN_DELAY_SECONDS + DRAIN_SECONDS) + 10)
"""Default time an old balancer process keeps its WebSockets after a reload: above the
servers' default drain (delay + window)."""

HaproxyStickiness = Literal["cookie", "source", "none"]
NginxStickiness = Literal["sid", "ip_hash", "hash", "none"]


@dataclass(frozen=True)
class Backend:
    """One socket server: public `host:port`, and the admin port its /readyz is on."""

    name: str
    """Server name; for nginx `sid` stickiness it must be the server's `IOFLEET_NODE_ID`."""
    host: str
    port: int
    admin_port: int | None = None
    """Port of /readyz; None checks the public port (a server without an admin listener)."""

    def __post_init__(self) -> None:
        if not NODE_ID.match(self.name):
            raise ValueError(f"backend name {self.name!r} must match {NODE_ID.pattern}")
        for port in (self.port, self.admin_port):
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"backend {self.name}: port {port} out of range")

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, spec: str, default_name: str) -> Backend:
        """Parse `[NAME=]HOST:PORT[:ADMIN]`; IPv6 hosts go in brackets."""
        name, _, rest = spec.rpartition("=")
        match = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\d+)(?::(\d+))?", rest)
        if match is None:
            raise ValueError(f"backend {spec!r} is not [NAME=]HOST:PORT[:ADMIN]")
        host, port, admin = match.groups()
        return cls(
            name=name or default_name,
            host=host.strip("[]"),
            port=int(port),
            admin_port=int(admin) if admin else None,
        )


@dataclass(frozen=True)
class Timeouts:
    """Balancer timeouts, derived from the servers' Engine.IO ping settings."""

    ping_interval_s: float = PING_INTERVAL_SECONDS
    """The servers' `IOFLEET_PING_INTERVAL`."""
    ping_timeout_s: float = PING_TIMEOUT_SECONDS
    """The servers' `IOFLEET_PING_TIMEOUT`."""
    drain_s: int = RELOAD_GRACE_S
    """How long an old balancer process keeps serving its WebSockets after a reload
    (`hard-stop-after`, `worker_shutdown_timeout`); when it runs out those clients all
    reconnect at once. At least the servers' `DRAIN_DELAY + DRAIN_SECONDS`; longer where
    the balancer reloads often (the nginx lever reloads on every change)."""
    connect_s: int = 5
    margin_s: int = 15
    """Slack above ping interval + ping timeout, so a slow pong is never cut."""
    fail_timeout_s: int = 10
    """nginx: how long a server that failed (refused, 503) stays out of the pool."""

    @property
    def idle_s(self) -> int:
        """Read/tunnel timeout: above ping interval + ping timeout."""
        return math.ceil(self.ping_interval_s + self.ping_timeout_s) + self.margin_s


@dataclass(frozen=True)
class DnsDiscovery:
    """In-cluster HAProxy: server pods found through a headless Service's DNS records."""

    hostname: str
    """FQDN of the headless Service, e.g. `iofleet-server.iofleet.svc.cluster.local`."""
    port: int = 8000
    admin_port: int | None = 9000
    slots: int = 50
    """Most pods HAProxy can route to (server-template slots); keep >= the HPA's max."""
    nameservers: tuple[str, ...] = ()
    """`ip:port` resolvers; empty uses the pod's /etc/resolv.conf."""
    hold_valid_s: int = 5
    cookie_key: str = "iofleet"
    """dynamic-cookie-key: salts the per-pod cookie value (it only hides pod addresses)."""
    prefix: str = "srv"
    resolvers_name: str = "cluster_dns"


@dataclass(frozen=True)
class HaproxyOptions:
    listen: str = "0.0.0.0:8080"
    """`bind` address: `HOST:PORT`, or `:PORT` for every address."""
    backends: tuple[Backend, ...] = ()
    discovery: DnsDiscovery | None = None
    stickiness: HaproxyStickiness = "cookie"
    cookie_name: str = "iofleet_node"
    admin_socket: str | None = "/run/haproxy/admin.sock"
    """Runtime API socket (the drain lever); None leaves it out."""
    stats_listen: str | None = None
    """Optional stats page address; never the public one."""
    health_path: str = "/readyz"
    maxconn: int | None = None
    """Global connection cap; None lets HAProxy derive it from the fd limit it finds
    (a fixed value above what the limit allows stops HAProxy at start)."""
    log: Literal["stdout", "stderr", "none"] = "stdout"
    pidfile: str | None = None
    backend_name: str = "iofleet_servers"
    timeouts: Timeouts = field(default_factory=Timeouts)
    spare_servers: tuple[str, ...] = ()
    """Names of server slots declared disabled, with their cookie and sid rule: the local
    autoscaler points one at a new server (`set server ... addr`) and enables it, no reload
    (HAProxy 2.6 refuses a `cookie` on a server added with `add server`)."""

    def __post_init__(self) -> None:
        if self.maxconn is not None and self.maxconn < 1:
            raise ValueError(f"maxconn must be at least 1 (got {self.maxconn})")
        if not self.backends and self.discovery is None:
            raise ValueError("HAProxy needs at least one backend or DNS discovery")
        _check_unique(self.backends)
        for name in self.spare_servers:
            if not NODE_ID.match(name):
                raise ValueError(f"spare server {name!r} must match {NODE_ID.pattern}")
        names = [b.name for b in self.backends] + list(self.spare_servers)
        if len(set(names)) != len(names):
            raise ValueError(f"spare servers repeat a name: {sorted(self.spare_servers)}")


@dataclass(frozen=True)
class NginxOptions:
    listen: str = "0.0.0.0:8080"
    """`listen` address: `HOST:PORT` or a port."""
    backends: tuple[Backend, ...] = ()
    stickiness: NginxStickiness = "sid"
    down: frozenset[str] = frozenset()
    """Backends out of the pool (drain): no new sessions, open sessions still routed."""
    maint: frozenset[str] = frozenset()
    """Backends left out entirely (removed or dead)."""
    daemon: bool = True
    user: str | None = None
    """Worker user; None keeps nginx's default (or the current user when not root)."""
    worker_processes: str = "auto"
    worker_connections: int = 16_384
    pid_path: str = "/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"
    error_log_level: str = "warn"
    access_log: str = "off"
    temp_dir: str | None = None
    """Directory for nginx temp paths (relative to the `-p` prefix, or absolute)."""
    client_max_body_size: str = "2m"
    """Above the servers' MAX_MESSAGE_BYTES (1 MB), so the server, not nginx, decides."""
    reuseport: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        _check_unique(self.backends)
        names = {b.name for b in self.backends}
        unknown = (self.down | self.maint) - names
        if unknown:
            raise ValueError(f"unknown backends in down/maint: {sorted(unknown)}")
        if not self.live_backends:
            raise ValueError("nginx needs at least one backend not in maintenance")

    @property
    def live_backends(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.name not in self.maint)


def _check_unique(backends: tuple[Backend, ...]) -> None:
    names = [b.name for b in backends]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate backend names: {duplicates}")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("iofleet", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # config files, not HTML
    )


def render_haproxy(options: HaproxyOptions) -> str:
    """The HAProxy config for `options`."""
    template = _environment().get_template(HAPROXY_TEMPLATE)
    log_target = None if options.log == "none" else options.log
    return template.render(o=options, t=options.timeouts, log_target=log_target)


def render_nginx(options: NginxOptions) -> str:
    """The nginx config (a whole nginx.conf) for `options`."""
    template = _environment().get_template(NGINX_TEMPLATE)
    return template.render(o=options, t=options.timeouts)
