"""`iofleet images push`: build both images from the lock (infra/docker/build-images,
podman) and push them to ECR tagged with the commit's git sha.

The plan (the exact commands) is computed apart from running it, so `--dry-run` prints
what a push would do and tests check it without AWS. Tags are immutable in the
repositories the registry stack makes (infra/registry.py): a tag names one commit, so
a tree with uncommitted changes is refused rather than pushed under a sha it is not.
"""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.contract import IMAGE_REPOSITORIES

BUILD_SCRIPT = "infra/docker/build-images"
# <account>.dkr.ecr.<region>.amazonaws.com (.com.cn in China): what `aws ecr
# get-login-password` logs in to; the region is part of the name.
ECR_REGISTRY = re.compile(
    r"^\d{12}\.dkr\.ecr\.(?P<region>[a-z]{2}(-gov)?-[a-z]+-\d)\.amazonaws\.com(\.cn)?$"
)
# The nodes run AL2023_x86_64_STANDARD; build-images builds for the machine it runs on.
NODE_ARCHITECTURES = ("x86_64", "amd64")


class ImagesError(Exception):
    """Why a push cannot start; one line."""


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    stdin_from: tuple[str, ...] | None = None
    """A command whose output is this one's input (a password, never printed)."""

    def __str__(self) -> str:
        command = shlex.join(self.argv)
        return f"{shlex.join(self.stdin_from)} | {command}" if self.stdin_from else command


@dataclass(frozen=True)
class PushPlan:
    tag: str
    steps: tuple[Step, ...]
    digest_files: dict[str, Path]
    """Pushed reference (registry/name:tag) -> the file podman writes its digest to."""


def registry_region(registry: str) -> str:
    match = ECR_REGISTRY.match(registry)
    if match is None:
        raise ImagesError(
            f"{registry!r} is not an ECR registry (<account>.dkr.ecr.<region>.amazonaws.com;"
            " the registry stack's `repositories` output)"
        )
    return match["region"]


def push_plan(
    tag: str, registries: Sequence[str], digest_dir: Path, base: str | None = None
) -> PushPlan:
    """Build once, then log in to, tag for and push to each registry."""
    if not registries:
        raise ImagesError("give at least one --registry")
    build = [BUILD_SCRIPT, "--tag", tag]
    if base:
        build += ["--base", base]
    steps = [Step(tuple(build))]
    digests: dict[str, Path] = {}
    for registry in registries:
        region = registry_region(registry)
        steps.append(
            Step(
                ("podman", "login", "--username", "AWS", "--password-stdin", registry),
                stdin_from=("aws", "ecr", "get-login-password", "--region", region),
            )
        )
        for name in IMAGE_REPOSITORIES:
            remote = f"{registry}/{name}:{tag}"
            digest_file = digest_dir / f"{registry}-{name}.digest"
            steps.append(Step(("podman", "tag", f"localhost/{name}:{tag}", remote)))
            steps.append(Step(("podman", "push", "--digestfile", str(digest_file), remote)))
            digests[remote] = digest_file
    return PushPlan(tag, tuple(steps), digests)


def commit_tag(source: Path) -> str:
    """The checked-out commit's sha, refusing a tree that differs from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ImagesError(f"git {' '.join(args)}: {result.stderr.strip() or 'failed'}")
        return result.stdout.strip()

    if git("status", "--porcelain", "--untracked-files=no"):
        raise ImagesError(
            "the tree has uncommitted changes: commit them first (the tag is the commit's sha"
            " and ECR tags are immutable)"
        )
    return git("rev-parse", "HEAD")


def check_architecture(machine: str | None = None) -> None:
    machine = machine or platform.machine()
    if machine.lower() not in NODE_ARCHITECTURES:
        raise ImagesError(
            f"this machine is {machine}; the nodes run x86_64 and build-images builds for the"
            " machine it runs on: push from an x86_64 machine (CI)"
        )


def run_plan(plan: PushPlan, source: Path) -> list[str]:
    """Run every step in `source`, stopping at the first failure; return the pushed
    images by digest (what `iofleet:image` and `iofleet:autoscaler_image` take)."""
    for step in plan.steps:
        if step.stdin_from is None:
            done = subprocess.run(step.argv, cwd=source, check=False)
        else:
            with subprocess.Popen(step.stdin_from, cwd=source, stdout=subprocess.PIPE) as feed:
                done = subprocess.run(step.argv, cwd=source, stdin=feed.stdout, check=False)
                feed.wait()
            if feed.returncode != 0:
                raise ImagesError(f"{shlex.join(step.stdin_from)} exited {feed.returncode}")
        if done.returncode != 0:
            raise ImagesError(f"{shlex.join(step.argv)} exited {done.returncode}")
    return [
        f"{remote.rsplit(':', 1)[0]}@{path.read_text().strip()}"
        for remote, path in plan.digest_files.items()
    ]
