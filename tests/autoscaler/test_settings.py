"""The autoscaler's settings: the infra contract, one-line errors, the README table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.settings import AUTOSCALER_ENV_PREFIX, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

# What infra/workloads.py renders today (the binding contract).
INFRA_ENV = {
    "IOFLEET_AUTOSCALER_NAMESPACE": "iofleet",
    "IOFLEET_AUTOSCALER_DEPLOYMENT": "iofleet-server",
    "IOFLEET_AUTOSCALER_POD_SELECTOR": "app.kubernetes.io/name=iofleet-server,"
    "app.kubernetes.io/part-of=iofleet",
    "IOFLEET_AUTOSCALER_ADMIN_PORT": "9000",
    "IOFLEET_AUTOSCALER_METRICS_PORT": "6443",
    "IOFLEET_AUTOSCALER_TLS_CERT_FILE": "/etc/iofleet/tls/tls.crt",
    "IOFLEET_AUTOSCALER_TLS_KEY_FILE": "/etc/iofleet/tls/tls.key",
    "IOFLEET_AUTOSCALER_TARGET_CONNECTIONS": "1000",
    "IOFLEET_AUTOSCALER_MIN": "2",
    "IOFLEET_AUTOSCALER_MAX": "20",
    "IOFLEET_AUTOSCALER_MODE": "hpa",
}


def test_the_infra_env_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in INFRA_ENV.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.labels == {
        "app.kubernetes.io/name": "iofleet-server",
        "app.kubernetes.io/part-of": "iofleet",
    }
    assert (settings.min, settings.max, settings.mode) == (2, 20, "hpa")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"IOFLEET_AUTOSCALER_MIN": "abc"}, "IOFLEET_AUTOSCALER_MIN"),
        ({"IOFLEET_AUTOSCALER_MODE": "sideways"}, "IOFLEET_AUTOSCALER_MODE"),
        ({"IOFLEET_AUTOSCALER_POD_SELECTOR": "app"}, "IOFLEET_AUTOSCALER_POD_SELECTOR"),
        ({"IOFLEET_AUTOSCALER_MIN": "5", "IOFLEET_AUTOSCALER_MAX": "3"}, "IOFLEET_AUTOSCALER_MAX"),
        ({"IOFLEET_AUTOSCALER_TLS_CERT_FILE": "/x"}, "IOFLEET_AUTOSCALER_TLS_KEY_FILE"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert names in str(error.value)
    assert "\n" not in str(error.value)


def test_python_m_autoscaler_exits_2_with_one_line() -> None:
    env = {**os.environ, "IOFLEET_AUTOSCALER_TARGET_CONNECTIONS": "-1"}
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler", "--backend", "kubernetes"],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "IOFLEET_AUTOSCALER_TARGET_CONNECTIONS" in lines[0]


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(IOFLEET_AUTOSCALER_[A-Z_]+)` \|", README, re.MULTILINE))
    assert documented == {
        f"{AUTOSCALER_ENV_PREFIX}{name.upper()}" for name in Settings.model_fields
    }
