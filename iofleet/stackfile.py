"""Edit config keys of a Pulumi stack file (`Pulumi.<stack>.yaml`) in place.

Round-trips with ruamel.yaml so comments, key order and everything else in the
file stay as they were; only the named `iofleet:` keys change.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

PROJECT = "iofleet"


class StackFileError(ValueError):
    """A stack file that cannot be read or edited; the message names the file."""


def stack_path(directory: Path, stack: str) -> Path:
    return directory / f"Pulumi.{stack}.yaml"


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments and order kept
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def read_config(path: Path) -> dict[str, Any]:
    """The stack's `config:` map as plain values."""
    try:
        data = _yaml().load(path.read_text())
    except (OSError, YAMLError) as error:
        raise StackFileError(f"{path}: {error}") from None
    config = (data or {}).get("config") or {}
    if not isinstance(config, Mapping):
        raise StackFileError(f"{path}: 'config' is not a mapping")
    return dict(config)


def write_config(path: Path, values: Mapping[str, Any]) -> list[str]:
    """Set `iofleet:<key>` for each of `values`; return the keys whose value changed.

    The file is replaced only once the new text is complete.
    """
    yaml = _yaml()
    try:
        data = yaml.load(path.read_text())
    except (OSError, YAMLError) as error:
        raise StackFileError(f"{path}: {error}") from None
    if data is None or "config" not in data or data["config"] is None:
        raise StackFileError(f"{path}: no 'config:' section to write into")
    config = data["config"]
    changed = []
    for key, value in values.items():
        full = f"{PROJECT}:{key}"
        if config.get(full) != value:
            changed.append(full)
        config[full] = value
    text = io.StringIO()
    yaml.dump(data, text)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text.getvalue())
    tmp.replace(path)
    return changed
