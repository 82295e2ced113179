"""Fixtures shared by the autoscaler tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.autoscaler.certs import Pki, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)
