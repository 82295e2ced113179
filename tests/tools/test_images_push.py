"""`iofleet images push` (issue 24, also expected: the image pipeline). No AWS and no
registry here, so the tests check the plan, the exact commands a push runs, on a real
git checkout; and one run where `aws`, `podman` and the build script are stand-ins on
PATH that record what they were given (the password must travel by stdin only)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.images import ImagesError, check_architecture, push_plan

US = "444455556666.dkr.ecr.us-east-1.amazonaws.com"
EU = "444455556666.dkr.ecr.eu-west-1.amazonaws.com"
SHA = "0123456789abcdef0123456789abcdef01234567"


def test_the_plan_builds_once_and_pushes_each_image_to_each_registry(tmp_path: Path) -> None:
    plan = push_plan(SHA, [US, EU], tmp_path)
    assert [str(step) for step in plan.steps] == [
        f"infra/docker/build-images --tag {SHA}",
        f"aws ecr get-login-password --region us-east-1 | podman login --username AWS"
        f" --password-stdin {US}",
        f"podman tag localhost/iofleet-server:{SHA} {US}/iofleet-server:{SHA}",
        f"podman push --digestfile {tmp_path}/{US}-iofleet-server.digest {US}/iofleet-server:{SHA}",
        f"podman tag localhost/iofleet-autoscaler:{SHA} {US}/iofleet-autoscaler:{SHA}",
        f"podman push --digestfile {tmp_path}/{US}-iofleet-autoscaler.digest"
        f" {US}/iofleet-autoscaler:{SHA}",
        f"aws ecr get-login-password --region eu-west-1 | podman login --username AWS"
        f" --password-stdin {EU}",
        f"podman tag localhost/iofleet-server:{SHA} {EU}/iofleet-server:{SHA}",
        f"podman push --digestfile {tmp_path}/{EU}-iofleet-server.digest {EU}/iofleet-server:{SHA}",
        f"podman tag localhost/iofleet-autoscaler:{SHA} {EU}/iofleet-autoscaler:{SHA}",
        f"podman push --digestfile {tmp_path}/{EU}-iofleet-autoscaler.digest"
        f" {EU}/iofleet-autoscaler:{SHA}",
    ]
    with_base = push_plan(SHA, [US], tmp_path, base="python:3.12.8-slim-bookworm")
    assert with_base.steps[0].argv[-2:] == ("--base", "python:3.12.8-slim-bookworm")


@pytest.mark.parametrize(
    "registry", ["docker.io/acme", "444455556666.dkr.ecr.amazonaws.com", "ecr.us-east-1.aws"]
)
def test_only_ecr_registries(tmp_path: Path, registry: str) -> None:
    with pytest.raises(ImagesError, match="is not an ECR registry"):
        push_plan(SHA, [registry], tmp_path)


def test_only_from_an_x86_64_machine() -> None:
    check_architecture("x86_64")
    with pytest.raises(ImagesError, match="this machine is aarch64; the nodes run x86_64"):
        check_architecture("aarch64")


def git(source: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(source), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A real git repository with a committed build script that records its arguments."""
    source = tmp_path / "src"
    script = source / "infra" / "docker" / "build-images"
    script.parent.mkdir(parents=True)
    script.write_text('#!/bin/sh\necho "build $*" >> "$RECORD"\n')
    script.chmod(0o755)
    git(source, "init", "--quiet")
    git(source, "add", ".")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "x")
    return source


def invoke(source: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    here = Path.cwd()
    os.chdir(source)
    try:
        result = CliRunner().invoke(app, ["images", "push", *args], env=env)
    finally:
        os.chdir(here)
    return result.exit_code, result.stdout, result.stderr


def test_dry_run_prints_the_plan_for_the_checked_out_commit(checkout: Path) -> None:
    code, out, _ = invoke(checkout, "--dry-run", "--registry", US)
    sha = git(checkout, "rev-parse", "HEAD")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"infra/docker/build-images --tag {sha}"
    assert lines[-1].startswith("podman push --digestfile ")
    assert lines[-1].endswith(f" {US}/iofleet-autoscaler:{sha}")
    assert len(lines) == 6


def test_a_tree_with_uncommitted_changes_is_refused(checkout: Path) -> None:
    (checkout / "infra" / "docker" / "build-images").write_text("#!/bin/sh\necho changed\n")
    code, out, err = invoke(checkout, "--dry-run", "--registry", US)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "iofleet images push: the tree has uncommitted changes: commit them first (the tag is"
        " the commit's sha and ECR tags are immutable)"
    ]


def test_a_push_logs_in_by_stdin_and_prints_the_digests(checkout: Path, tmp_path: Path) -> None:
    if os.uname().machine not in ("x86_64", "amd64"):
        pytest.fail("the push runs only on x86_64 (as CI does); this machine is not")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    (bin_dir / "aws").write_text('#!/bin/sh\necho "aws $*" >> "$RECORD"\nprintf s3cr3t\n')
    (bin_dir / "podman").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = login ]; then echo "podman $* stdin=$(cat)" >> "$RECORD"; exit 0; fi\n'
        'echo "podman $*" >> "$RECORD"\n'
        'if [ "$1" = push ]; then printf sha256:%064d 7 > "$3"; fi\n'
    )
    for tool in ("aws", "podman"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    code, out, err = invoke(checkout, "--registry", US, env=env)
    assert code == 0, err
    sha = git(checkout, "rev-parse", "HEAD")
    digest = "sha256:" + "0" * 63 + "7"
    assert out.splitlines() == [
        f"pulumi config set iofleet:image {US}/iofleet-server@{digest}",
        f"pulumi config set iofleet:autoscaler_image {US}/iofleet-autoscaler@{digest}",
    ]
    calls = record.read_text().splitlines()
    assert calls[:3] == [
        f"build --tag {sha}",
        "aws ecr get-login-password --region us-east-1",
        f"podman login --username AWS --password-stdin {US} stdin=s3cr3t",
    ]
    assert "s3cr3t" not in out + err
