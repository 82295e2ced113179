"""The servers' settings as the fleet sees them: the server's own model, not a second parser.

The local fleet hands its servers an environment; the balancer in front of them must
know their ping and drain settings. Both come from `server.settings.Settings`, so a
bad value stops `iofleet up` with the server's own one-line error before anything starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import ValidationError

from iofleet.render import Timeouts
from server.contract import ENV_PREFIX
from server.settings import Settings, SettingsError, describe_validation_error

RELOAD_GRACE_FLOOR_S = 300
"""nginx is reloaded on every readiness change: an old worker keeps its WebSockets at
least this long, so a reload, not a drain, never decides when clients reconnect."""


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Validate `env` as a server would read it (`IOFLEET_` prefix, empty = unset)."""
    fields = Settings.model_fields
    values = {
        key.removeprefix(ENV_PREFIX).lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and value.strip()
    }
    try:
        # model_validate reads only `values`, never this process's own environment.
        return Settings.model_validate({k: v for k, v in values.items() if k in fields})
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


def balancer_timeouts(settings: Settings) -> Timeouts:
    """Balancer timeouts that fit servers running with `settings`."""
    drain = settings.drain_delay + settings.drain_seconds
    return Timeouts(
        ping_interval_s=settings.ping_interval,
        ping_timeout_s=settings.ping_timeout,
        drain_s=max(math.ceil(drain) + 10, RELOAD_GRACE_FLOOR_S),
    )
