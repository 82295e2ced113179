"""The server's settings: read once from `IOFLEET_*` variables, validated, frozen.

This is the one place that reads the environment. A bad value stops the
process with one line naming the variable (see `load_settings`).
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.contract import (
    ADMIN_PORT,
    DRAIN_DELAY_SECONDS,
    DRAIN_SECONDS,
    ENV_PREFIX,
    HS256_MIN_SECRET_BYTES,
    NODE_ID_PATTERN,
    NODE_ID_RULE,
    PING_INTERVAL_SECONDS,
    PING_TIMEOUT_SECONDS,
    PUBLIC_PORT,
)
from server.net.redis_topology import parse_redis_url

Transport = Literal["websocket", "polling"]
# Slow-consumer limits (server/eio/socket.py), also the engine's defaults when it
# is built without settings. 64 KiB is asyncio's own write high-water mark.
SEND_BUFFER_BYTES = 64 * 1024
SEND_QUEUE_PACKETS = 1024
# And the bytes those packets may hold: four at the 1 MB message limit (1,024
# chat-sized packets of about 100 bytes are 100 KB, so for small packets the
# packet bound comes first).
SEND_QUEUE_BYTES = 4 * 1024 * 1024
DEFAULT_TRANSPORTS: tuple[Transport, ...] = ("websocket", "polling")
# The public edge. A head gets as long as HAProxy's `timeout http-request` (10 s,
# iofleet/templates/haproxy); an idle keep-alive connection outlives the balancers'
# own idle upstream connections (nginx `keepalive_timeout` 60 s by default), so they
# never reuse one the node is closing (aiohttp's default, 3630 s, held idle
# connections for an hour); the backlog is Node's and nginx's default (511).
HEAD_TIMEOUT_SECONDS = 10.0
# Engine.IO sessions allowed beyond MAX_CONNECTIONS, for handshakes whose Socket.IO
# CONNECT is still to come (one round trip): at the measured connect rate (about
# 7,000/s, 143 us each, bench/fanout_bench.py) 1,000 is over 100 ms of connects.
MAX_UNCONNECTED_SESSIONS = 1000
KEEPALIVE_TIMEOUT_SECONDS = 75.0
LISTEN_BACKLOG = 511


def _default_node_id() -> str:
    """The host name (the pod name on Kubernetes), cut to what a node id may hold."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:63].strip("-")
    return cleaned or "node"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every `IOFLEET_` variable the server reads. Field name = variable name."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # DESIGN: an empty value means unset
        frozen=True,
        extra="ignore",
    )

    port: int = Field(
        PUBLIC_PORT, ge=1, le=65535, description="Public port: /socket.io/ and the demo."
    )
    admin_port: int = Field(
        ADMIN_PORT,
        ge=0,
        le=65535,
        description="Admin port (health, metrics, drain); 0 turns it off.",
    )
    host: str = Field("0.0.0.0", description="Address both listeners bind to.")
    admin_host: str | None = Field(None, description="Admin listener address (default: HOST).")
    redis_url: str | None = Field(
        None,
        description="redis://, rediss://, redis+sentinel://, redis+cluster://; unset = one node.",
    )
    redis_channel: str = Field("iofleet", description="Pub/sub channel shared by all nodes.")
    fanout_outbox_messages: int = Field(
        10000, ge=0, description="Publishes held while Redis is away; 0 = none (lost at once)."
    )
    fanout_outbox_seconds: float = Field(
        30, gt=0, description="Age after which a held publish is dropped (s)."
    )
    recovery: bool = Field(
        False,
        description="Connection state recovery (Socket.IO v4.6+ pid/offset); needs REDIS_URL.",
    )
    recovery_window_seconds: float = Field(
        120, gt=0, le=86400, description="How long a dropped client can recover its session (s)."
    )
    recovery_max_messages: int = Field(
        100_000, ge=100, description="Events the recovery stream keeps at most (approximate)."
    )
    auth: Literal["jwt", "none"] = Field("jwt", description="`none` only when set explicitly.")
    jwt_secret: SecretStr | None = Field(None, description="HS256 secret.")
    jwt_public_key: SecretStr | None = Field(None, description="RS256 public key (PEM).")
    # Rotation windows: the previous key still verifies (never signs) until it is unset.
    jwt_secret_previous: SecretStr | None = Field(
        None, description="HS256 secret still accepted while a rotation rolls out."
    )
    jwt_public_key_previous: SecretStr | None = Field(
        None, description="RS256 public key still accepted while a rotation rolls out."
    )
    jwt_audience: str | None = Field(None, description="Required `aud` claim, if set.")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    guest_tokens: bool = Field(False, description="Serve POST /auth/guest (needs JWT_SECRET).")
    guest_token_ttl: int = Field(3600, ge=60, le=86400, description="Guest token lifetime (s).")
    guest_rate_per_minute: float = Field(10, gt=0, description="Guest tokens per client IP/min.")
    trust_proxy_headers: bool = Field(
        False, description="Take the client IP from X-Forwarded-For (behind our balancer)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed origins; empty = same origin only."
    )
    transports: Annotated[list[Transport], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_TRANSPORTS), description="Engine.IO transports."
    )
    ping_interval: float = Field(
        PING_INTERVAL_SECONDS, gt=0, le=300, description="Engine.IO ping interval (s)."
    )
    ping_timeout: float = Field(
        PING_TIMEOUT_SECONDS, gt=0, le=300, description="Engine.IO ping timeout (s)."
    )
    max_connections: int = Field(10000, ge=1, description="Connections this node accepts.")
    max_unconnected_sessions: int = Field(
        MAX_UNCONNECTED_SESSIONS,
        ge=1,
        description="Engine.IO sessions beyond MAX_CONNECTIONS (handshakes not connected yet).",
    )
    head_timeout: float = Field(
        HEAD_TIMEOUT_SECONDS,
        gt=0,
        le=300,
        description="Seconds a new connection has to send its request head (then 408).",
    )
    keepalive_timeout: float = Field(
        KEEPALIVE_TIMEOUT_SECONDS,
        gt=0,
        le=3600,
        description="Seconds an idle HTTP keep-alive connection is kept open.",
    )
    listen_backlog: int = Field(
        LISTEN_BACKLOG, ge=1, le=65535, description="Connects the public listener queues."
    )
    max_message_bytes: int = Field(
        1_000_000, ge=1024, description="Largest packet accepted; larger closes the sender."
    )
    ws_compression: bool = Field(
        False,
        description="permessage-deflate for WebSocket clients that offer it (Node's default: off).",
    )
    send_buffer_bytes: int = Field(
        SEND_BUFFER_BYTES,
        ge=1024,
        description="A broadcast goes straight to a WebSocket holding fewer unsent bytes.",
    )
    send_queue_packets: int = Field(
        SEND_QUEUE_PACKETS, ge=16, description="Packets queued for one client: more = evicted."
    )
    send_queue_bytes: int = Field(
        SEND_QUEUE_BYTES,
        ge=64 * 1024,
        description="Payload bytes queued for one client: more = evicted.",
    )
    rate_limit: float = Field(20, gt=0, description="Events/s per connection and per user.")
    rate_limit_burst: float | None = Field(None, gt=0, description="Bucket size (2 x rate).")
    rate_limit_strikes: int = Field(
        50, ge=1, description="Events refused in a row before that client is disconnected."
    )
    max_rooms_per_user: int = Field(50, ge=1, description="Rooms one user may be in, per node.")
    drain_seconds: float = Field(
        DRAIN_SECONDS, ge=0, description="Time to spread the closing over (s)."
    )
    drain_delay: float = Field(
        DRAIN_DELAY_SECONDS, ge=0, description="Wait for deregistration first (s)."
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token for POST /admin/*.")
    admin_token_previous: SecretStr | None = Field(
        None, description="Admin token still accepted while a rotation rolls out."
    )
    node_id: str = Field(default_factory=_default_node_id, description="This node's id.")
    handlers: str = Field(
        "server.apps.chat:register", description="module:function registering app events."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    uvloop: bool = Field(True, description="Run on uvloop when it is installed.")

    _split = field_validator("cors_origins", "transports", mode="before")(_split_csv)

    @field_validator("node_id")
    @classmethod
    def _node_id_is_safe(cls, value: str) -> str:
        # The node id is embedded in Engine.IO session ids, which nginx matches.
        if not NODE_ID_PATTERN.match(value):
            raise ValueError(f"must match {NODE_ID_RULE}")
        return value

    @field_validator("transports")
    @classmethod
    def _some_transport(cls, value: list[Transport]) -> list[Transport]:
        if not value:
            raise ValueError("needs at least one of websocket, polling")
        return value

    @field_validator("handlers")
    @classmethod
    def _handlers_shape(cls, value: str) -> str:
        if value.count(":") != 1 or not all(value.split(":")):
            raise ValueError("must be module:function")
        return value

    @field_validator("jwt_secret", "jwt_secret_previous")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < HS256_MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {HS256_MIN_SECRET_BYTES} bytes (RFC 7518 3.2)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_url(value)  # RedisUrlError: one line, the password masked
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_urls(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.match(r"^https?://[^/]+$", origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return value

    @model_validator(mode="after")
    def _auth_has_a_key(self) -> Settings:
        if self.auth == "jwt" and self.jwt_secret is None and self.jwt_public_key is None:
            raise ValueError("IOFLEET_AUTH=jwt needs IOFLEET_JWT_SECRET or IOFLEET_JWT_PUBLIC_KEY")
        if self.recovery and self.redis_url is None:
            raise ValueError(
                "IOFLEET_RECOVERY=true needs IOFLEET_REDIS_URL (sessions and the event stream"
                " live in Redis)"
            )
        if self.admin_token_previous is not None and self.admin_token is None:
            raise ValueError(
                "IOFLEET_ADMIN_TOKEN_PREVIOUS needs IOFLEET_ADMIN_TOKEN (the previous token is"
                " accepted besides the current one, never alone)"
            )
        if self.guest_tokens and self.jwt_secret is None:
            raise ValueError("IOFLEET_GUEST_TOKENS=true needs IOFLEET_JWT_SECRET to sign tokens")
        return self

    @property
    def admin_bind(self) -> str:
        return self.admin_host or self.host

    @property
    def admin_tokens(self) -> tuple[str, ...]:
        """The bearer tokens POST /admin/* accepts: current, then previous."""
        return tuple(
            token.get_secret_value()
            for token in (self.admin_token, self.admin_token_previous)
            if token is not None
        )

    @property
    def burst(self) -> float:
        return self.rate_limit_burst or 2 * self.rate_limit

    @property
    def cors_allowed(self) -> list[str] | str | None:
        """What engineio expects: None = same origin only, '*' = any."""
        if "*" in self.cors_origins:
            return "*"
        return self.cors_origins or None


class SettingsError(Exception):
    """A setting is wrong; the message is one line naming the variable."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError, prefix: str = ENV_PREFIX) -> str:
    """One line naming the first bad variable (`prefix` + field name) and what is wrong;
    secrets' values are never shown. The autoscaler's settings use it too."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if isinstance(part, str))
    message = first["msg"].removeprefix("Value error, ")
    count = error.error_count()
    more = f" (and {count - 1} more)" if count > 1 else ""
    if not field:  # a rule across variables: its message names them
        return f"invalid settings: {message}{more}"
    value = first.get("input")
    # Secrets never show; a Redis URL may hold a password (its error shows it masked).
    hidden = "secret" in field or field.endswith("_url")
    shown = f" (got {value!r})" if isinstance(value, str) and not hidden else ""
    return f"invalid setting {prefix}{field.upper()}: {message}{shown}{more}"
