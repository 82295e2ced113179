"""`<state dir>/servers.json`: the settings the local fleet's servers were started with.

`iofleet up` writes it before the first server starts; `iofleet restart` starts every
replacement with exactly these (new code, the same settings), never with whatever the
shell running the restart happens to hold: a fleet must not mix servers with recovery
on and off. Owner-only, as secrets.env: a Redis URL or a key in it may hold a password.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from server.contract import ENV_PREFIX
from server.settings import Settings

SERVERS_ENV_FILE = "servers.json"


def server_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` a server reads: the server's own settings model says which."""
    fields = Settings.model_fields
    return {
        key: value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX).lower() in fields
    }


def save_server_env(state_dir: Path, env: Mapping[str, str]) -> None:
    """Record the server settings of `env`, atomically, readable by the owner only."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SERVERS_ENV_FILE
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(server_settings(env), out, indent=2, sort_keys=True)
    os.replace(temporary, path)


def load_server_env(state_dir: Path) -> dict[str, str]:
    """The recorded settings; FileNotFoundError for a fleet started before they were."""
    data = json.loads((state_dir / SERVERS_ENV_FILE).read_text())
    return {str(key): str(value) for key, value in data.items()}
