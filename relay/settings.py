"""The relay's settings: read once from `IOFLEET_RELAY_*`, validated, frozen.

A bad value stops the process with one line naming the variable (exit code 2),
as the server and the autoscaler do. The far regions' Redis URLs carry their AUTH
token: in Kubernetes they come from a Secret (`infra/region_link.py`), never from
a plain value, and they are never logged (`redacted`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.contract import ENV_PREFIX
from server.net.redis_topology import RedisUrlError, parse_redis_url, redacted
from server.settings import SettingsError, describe_validation_error

RELAY_ENV_PREFIX = f"{ENV_PREFIX}RELAY_"


@dataclass(frozen=True)
class Peer:
    """A far region: its name and its Redis (where this relay publishes)."""

    region: str
    redis_url: str  # redis://, rediss://, or redis+cluster:// (rediss+cluster://)

    def __str__(self) -> str:
        return f"{self.region}={redacted(self.redis_url)}"


class Settings(BaseSettings):
    """Every `IOFLEET_RELAY_` variable. Field name = variable name after the prefix."""

    model_config = SettingsConfigDict(
        env_prefix=RELAY_ENV_PREFIX,
        env_ignore_empty=True,  # DESIGN: an empty value means unset
        frozen=True,
        extra="ignore",
    )

    region: str = Field(
        ..., min_length=1, pattern=r"^[a-z0-9-]+$", description="This region's name."
    )
    redis_url: str = Field(
        ..., description="This region's Redis or Redis Cluster (the servers' REDIS_URL)."
    )
    far_redis_url: str = Field(
        ...,
        description="The far regions, `region=redis_url` comma-separated (from a Secret);"
        " a Cluster's URL lists its seeds comma-separated too.",
    )
    redis_channel: str = Field("iofleet", description="The servers' IOFLEET_REDIS_CHANNEL.")
    recovery: bool = Field(
        True, description="Far emits go through the recovery stream (servers' IOFLEET_RECOVERY)."
    )
    recovery_window_seconds: float = Field(
        120.0, gt=0, description="The servers' IOFLEET_RECOVERY_WINDOW_SECONDS (stream trim)."
    )
    recovery_max_messages: int = Field(
        100_000, ge=100, description="The servers' IOFLEET_RECOVERY_MAX_MESSAGES (stream trim)."
    )
    outbox_messages: int = Field(
        10_000, ge=0, description="Messages held per link while it is down; beyond, dropped."
    )
    outbox_seconds: float = Field(
        60.0, gt=0, description="Oldest message a link's outbox keeps, seconds."
    )
    interest_seconds: float = Field(
        0.05, gt=0, le=10, description="How often this region's room interest is read."
    )
    interest_linger_seconds: float | None = Field(
        None,
        ge=0,
        description="A room stays of interest this long after its last member left"
        " (unset: the recovery window with recovery on, else 0).",
    )
    lease_seconds: float = Field(
        3.0,
        gt=0.3,
        le=60,
        description="One replica forwards; a standby takes over this long after it died.",
    )
    admin_host: str = Field(
        "127.0.0.1", description="Address of /healthz, /metrics and /admin/status."
    )
    admin_port: int = Field(9100, ge=1, le=65535, description="Port of the admin listener.")
    require_tls: bool = Field(
        False, description="Refuse a far Redis URL that is not rediss:// (production: true)."
    )

    @field_validator("redis_url")
    @classmethod
    def _valid_local(cls, value: str) -> str:
        _check_url(value)
        return value

    @field_validator("far_redis_url")
    @classmethod
    def _valid_peers(cls, value: str) -> str:
        parse_peers(value)
        return value

    @model_validator(mode="after")
    def _peers_are_far(self) -> Settings:
        for peer in self.peer_list():
            if peer.region == self.region:
                raise ValueError(f"IOFLEET_RELAY_FAR_REDIS_URL names this region {self.region!r}")
            if self.require_tls and not parse_redis_url(peer.redis_url).tls:
                raise ValueError(
                    f"IOFLEET_RELAY_FAR_REDIS_URL: {peer.region} is not rediss:// (or"
                    " rediss+cluster://) and IOFLEET_RELAY_REQUIRE_TLS is on"
                )
        return self

    def linger_seconds(self) -> float:
        if self.interest_linger_seconds is not None:
            return self.interest_linger_seconds
        return self.recovery_window_seconds if self.recovery else 0.0

    def peer_list(self) -> list[Peer]:
        return parse_peers(self.far_redis_url)


def _check_url(url: str) -> None:
    try:
        endpoint = parse_redis_url(url)
    except RedisUrlError as error:
        raise ValueError(str(error)) from None
    if endpoint.topology == "sentinel":
        # The relay reads interest and subscribes on the data nodes it is given; a
        # Sentinel-found master is not among the regional choices (`redis_mode`).
        raise ValueError(
            f"the relay needs one Redis or a Redis Cluster (redis://, redis+cluster://,"
            f" rediss:// for TLS), got {endpoint}"
        )


# A comma starts the next peer (`region=`) or, in a Cluster URL, its next seed (`host:port`).
PEER_START = re.compile(r"^\s*([a-z0-9-]+)=")


def parse_peers(value: str) -> list[Peer]:
    """`a=redis://...,b=redis+cluster://h1:6379,h2:6379` as peers; ValueError (URL
    masked) when malformed."""
    items: list[list[str]] = []  # [region, url] each
    for part in filter(None, (part.strip() for part in value.split(","))):
        start = PEER_START.match(part)
        if start is not None:
            items.append([start.group(1), part[start.end() :].strip()])
        elif items and items[-1][1].partition("://")[0].endswith("+cluster"):
            items[-1][1] += f",{part}"  # the Cluster URL's next seed
        else:
            raise ValueError(f"a peer is `region=redis_url`, got {redacted(part)!r}")
    peers: list[Peer] = []
    for region, url in items:
        _check_url(url)
        peers.append(Peer(region, url))
    if not peers:
        raise ValueError("at least one peer region is needed")
    if len({peer.region for peer in peers}) != len(peers):
        raise ValueError("a peer region is named twice")
    return peers


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, RELAY_ENV_PREFIX)) from None
