"""Where `auth: signed` gets its HS256 secret, decided before the first connect.

In order: the fleet named with `--fleet DIR` (its `secrets.env`, what `iofleet up`
made); the environment variable `--jwt-secret-env` names; the local fleet in the default
state directory when the target is that fleet's URL. Nothing found while the scenario
signs tokens is a configuration error: one line, exit 2, no connection tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from iofleet.fleet_secrets import SECRETS_FILE, read_secrets
from iofleet.fleet_state import DEFAULT_STATE_DIR, FleetState

SECRET_KEY = "IOFLEET_JWT_SECRET"
"""The fleet's secret in secrets.env (the servers' own variable)."""


class SigningError(ValueError):
    """No secret for a scenario that signs tokens; the message is the one line to print."""


def signing_secret(
    auth_modes: set[str],
    target: str,
    env_var: str,
    environ: Mapping[str, str],
    fleet_dir: Path | None = None,
    default_dir: Path = DEFAULT_STATE_DIR,
) -> str | None:
    """The HS256 secret the run signs tokens with; None when no flow signs any."""
    if "signed" not in auth_modes:
        return None
    if fleet_dir is not None:
        secret = (read_secrets(fleet_dir) or {}).get(SECRET_KEY)
        if not secret:
            raise SigningError(
                f"--fleet {fleet_dir}: no {SECRET_KEY} in {fleet_dir / SECRETS_FILE}"
                " (is it the state directory `iofleet up` used?)"
            )
        return secret
    if environ.get(env_var):
        return environ[env_var]
    if _is_fleet_url(default_dir, target):
        secret = (read_secrets(default_dir) or {}).get(SECRET_KEY)
        if secret:
            return secret
    raise SigningError(
        f"auth: signed needs a JWT secret: set ${env_var} (--jwt-secret-env), or pass"
        f" --fleet DIR for a local fleet (none in {default_dir} serves {target})"
    )


def _is_fleet_url(state_dir: Path, target: str) -> bool:
    """Whether the fleet recorded in `state_dir` is the one `target` points at."""
    try:
        state = FleetState.load(state_dir)
    except (OSError, ValueError, KeyError):
        return False
    return state is not None and _origin(state.url) == _origin(target)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    host = (parts.hostname or "").replace("localhost", "127.0.0.1")
    scheme = parts.scheme.replace("ws", "http")
    return scheme, host, parts.port or (443 if scheme == "https" else 80)
