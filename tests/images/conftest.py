"""Session fixtures of the image tests: both images built once, the Deployments rendered."""

from __future__ import annotations

from typing import Any

import pytest

from tests.images.podman import Built, build_images, render_deployments


@pytest.fixture(scope="session")
def built() -> Built:
    return build_images()


@pytest.fixture(scope="session")
def rendered() -> dict[str, Any]:
    """The dev stack's server and autoscaler Deployments, as infra/workloads.py renders."""
    return render_deployments("dev")
