"""The autoscaler's settings: read once from `IOFLEET_AUTOSCALER_*`, validated, frozen.

The names are a contract with the infra program (`infra/workloads.py` renders
them): add new ones with defaults, never rename. A bad value stops the process
with one line naming the variable (exit code 2), as the server does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.contract import ADMIN_PORT, CONNECTIONS_METRIC, ENV_PREFIX
from server.settings import SettingsError, describe_validation_error

AUTOSCALER_ENV_PREFIX = f"{ENV_PREFIX}AUTOSCALER_"
Mode = Literal["hpa", "direct"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


class Settings(BaseSettings):
    """Every `IOFLEET_AUTOSCALER_` variable. Field name = variable name after the prefix."""

    model_config = SettingsConfigDict(
        env_prefix=AUTOSCALER_ENV_PREFIX,
        env_ignore_empty=True,  # DESIGN: an empty value means unset
        frozen=True,
        extra="ignore",
    )

    mode: Mode = Field(
        "hpa",
        description="hpa: an HPA scales from our metrics API; direct: we scale the Deployment.",
    )
    namespace: str = Field("default", description="Namespace of the server pods.")
    deployment: str = Field("iofleet-server", description="The server Deployment.")
    pod_selector: str = Field(
        "app.kubernetes.io/name=iofleet-server",
        description="Label selector of the server pods (k=v,k2=v2).",
    )
    admin_port: int = Field(ADMIN_PORT, ge=1, le=65535, description="The pods' admin port.")
    metric: str = Field(CONNECTIONS_METRIC, description="Gauge scraped from /metrics.")
    metrics_port: int = Field(
        6443, ge=1, le=65535, description="HTTPS port of custom.metrics.k8s.io (apiserver only)."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the HTTPS listener binds to.")
    tls_cert_file: Path | None = Field(None, description="Serving certificate (PEM).")
    tls_key_file: Path | None = Field(None, description="Serving key (PEM).")
    status_port: int = Field(8081, ge=0, le=65535, description="Plain-HTTP status page; 0 = off.")
    status_host: str = Field("127.0.0.1", description="Status listener address.")
    target_connections: float = Field(
        1000, gt=0, description="Target average connections per ready pod."
    )
    min: int = Field(2, ge=1, description="Fewest replicas.")
    max: int = Field(10, ge=1, description="Most replicas.")
    tolerance: float = Field(0.1, ge=0, lt=1, description="No change within this ratio of 1.")
    sync_seconds: float = Field(15, gt=0, le=600, description="Control loop period (HPA: 15).")
    scrape_seconds: float = Field(5, gt=0, le=600, description="Scrape round period (s).")
    scrape_timeout: float = Field(2, gt=0, le=60, description="Per-pod scrape timeout (s).")
    metric_window_seconds: int = Field(
        15, ge=1, description="The `window` reported with each metric value (s)."
    )
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale-up stabilization window (s)."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale-down stabilization window (s)."
    )
    scale_up_select_policy: SelectPolicy = Field("Max", description="Max, Min or Disabled.")
    scale_down_select_policy: SelectPolicy = Field("Max", description="Max, Min or Disabled.")
    scale_up_percent: int = Field(100, ge=1, description="Percent policy, per period.")
    scale_up_pods: int = Field(4, ge=1, description="Pods policy, per period.")
    scale_up_period_seconds: int = Field(15, ge=1, le=1800, description="Policy period (s).")
    scale_down_percent: int = Field(100, ge=1, le=100, description="Percent policy, per period.")
    scale_down_pods: int | None = Field(None, ge=1, description="Pods policy; unset = none.")
    scale_down_period_seconds: int = Field(15, ge=1, le=1800, description="Policy period (s).")
    deletion_cost_interval: float = Field(
        60, ge=0, description="Least time between two deletion-cost patches of one pod (s)."
    )
    spare: int = Field(
        0,
        ge=0,
        le=100,
        description="Local backend: warm servers kept started out of the balancer rotation,"
        " put in rotation first on a scale-up (haproxy only).",
    )
    state_dir: Path | None = Field(
        None, description="Local backend: the fleet's state directory (fleet.json, secrets)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")

    @field_validator("pod_selector")
    @classmethod
    def _selector_shape(cls, value: str) -> str:
        for term in value.split(","):
            key, sep, label = term.partition("=")
            if not sep or not key.strip() or "!" in key or not label.strip():
                raise ValueError("must be key=value[,key=value...]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.min > self.max:
            raise ValueError(
                f"{AUTOSCALER_ENV_PREFIX}MIN ({self.min}) exceeds {AUTOSCALER_ENV_PREFIX}MAX"
                f" ({self.max})"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                f"{AUTOSCALER_ENV_PREFIX}TLS_CERT_FILE and {AUTOSCALER_ENV_PREFIX}TLS_KEY_FILE"
                " go together"
            )
        return self

    @property
    def labels(self) -> dict[str, str]:
        """The pod selector as a label dict."""
        pairs = (term.split("=", 1) for term in self.pod_selector.split(","))
        return {key.strip(): value.strip() for key, value in pairs}


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, AUTOSCALER_ENV_PREFIX)) from None
