"""Check a stack file offline, before `pulumi up`: the same validation the program runs
(infra.config.validate), every problem listed at once, plus keys Pulumi would pass the
program but no model field reads (a misspelt key would otherwise be ignored).

    python -m infra.check Pulumi.prod-us-east-1.yaml     (or: make check-stack STACK=...)

Exit status 0 when the stack is ready for `pulumi up`, 1 when it is not.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from infra.config import NAMESPACE, Settings, validate

# Keys of other namespaces a stack file may carry (the aws provider's own settings).
PROVIDER_NAMESPACES = ("aws",)


def stack_values(stack_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(iofleet values, other namespaces' values) as `pulumi up` would see them:
    Pulumi.yaml's defaults under the stack file's values."""
    project = yaml.safe_load((stack_file.parent / "Pulumi.yaml").read_text())
    values: dict[str, Any] = {k: v.get("default") for k, v in project["config"].items()}
    others: dict[str, Any] = {}
    stack = yaml.safe_load(stack_file.read_text()) or {}
    for full_key, value in (stack.get("config") or {}).items():
        namespace, _, key = str(full_key).partition(":")
        if namespace == NAMESPACE:
            # A `pulumi config set --secret` value is encrypted here: it is set, and only
            # the engine can read it.
            values[key] = "<secret>" if isinstance(value, dict) and "secure" in value else value
        else:
            others[str(full_key)] = value
    return values, others


def problems_in(stack_file: Path) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one stack file."""
    stack = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    values, others = stack_values(stack_file)
    found = []
    for key in others:
        if key.partition(":")[0] not in (*PROVIDER_NAMESPACES, NAMESPACE):
            found.append(f"{key}: unknown namespace; iofleet reads iofleet:* and aws:*")
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        # The model refuses them too; said here first so the message names the file.
        values = {k: v for k, v in values.items() if k not in unknown}
        found.extend(
            f"{NAMESPACE}:{key} is not a known key (misspelt?); see Pulumi.yaml" for key in unknown
        )
    region = others.get("aws:region")
    _, problems, warnings = validate(values, stack=stack, region=region)
    return found + problems, warnings


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not files:
        print("usage: python -m infra.check Pulumi.<stack>.yaml ...", file=sys.stderr)
        return 2
    failed = False
    for stack_file in files:
        if not stack_file.is_file():
            print(f"{stack_file}: no such file", file=sys.stderr)
            failed = True
            continue
        problems, warnings = problems_in(stack_file)
        for line in warnings:
            print(f"{stack_file}: warning: {line}")
        for line in problems:
            print(f"{stack_file}: {line}")
        if problems:
            failed = True
        else:
            print(f"{stack_file}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
