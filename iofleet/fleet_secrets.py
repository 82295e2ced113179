"""The local fleet's secrets: made once into `<state dir>/secrets.env` (0600), never printed."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRETS_FILE = "secrets.env"


def load_secrets(state_dir: Path) -> dict[str, str]:
    """The fleet's `IOFLEET_JWT_SECRET` and `IOFLEET_ADMIN_TOKEN`, created on first use."""
    path = state_dir / SECRETS_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        values = {
            "IOFLEET_JWT_SECRET": secrets.token_urlsafe(48),
            "IOFLEET_ADMIN_TOKEN": secrets.token_urlsafe(32),
        }
        # Created owner-only from the start: never world-readable, even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{key}={value}\n" for key, value in values.items())
    found = read_secrets(state_dir)
    assert found is not None  # made above
    return found


def read_secrets(state_dir: Path) -> dict[str, str] | None:
    """The secrets a fleet made in `state_dir`; None when it has none (nothing is made)."""
    try:
        lines = (state_dir / SECRETS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return None
    return dict(line.split("=", 1) for line in lines if "=" in line)
