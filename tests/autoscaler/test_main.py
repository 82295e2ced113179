"""`python -m autoscaler --backend kubernetes` as a process: the infra's env, a kubeconfig
pointing at kmock, SIGTERM stops it with 0; direct mode beside an HPA exits 2 with one
line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import kmock
import pytest
import yaml

from iofleet.processes import free_port
from tests.autoscaler.certs import Pki, client_context
from tests.autoscaler.test_kubernetes_backend import HPAS, LABELS, NS, _hpa
from tests.autoscaler.test_run import seed_cluster

ROOT = Path(__file__).resolve().parents[2]


def process_env(server: kmock.KubernetesEmulator, pki: Pki, tmp: Path) -> dict[str, str]:
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(server.url)}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                "current-context": "kmock",
            }
        )
    )
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "IOFLEET_AUTOSCALER_NAMESPACE": NS,
        "IOFLEET_AUTOSCALER_DEPLOYMENT": "iofleet-server",
        "IOFLEET_AUTOSCALER_POD_SELECTOR": ",".join(f"{k}={v}" for k, v in LABELS.items()),
        "IOFLEET_AUTOSCALER_ADMIN_PORT": str(free_port()),
        "IOFLEET_AUTOSCALER_METRICS_PORT": str(free_port()),
        "IOFLEET_AUTOSCALER_METRICS_HOST": "127.0.0.1",
        "IOFLEET_AUTOSCALER_STATUS_PORT": str(free_port()),
        "IOFLEET_AUTOSCALER_TLS_CERT_FILE": str(pki.serving.cert),
        "IOFLEET_AUTOSCALER_TLS_KEY_FILE": str(pki.serving.key),
        "IOFLEET_AUTOSCALER_TARGET_CONNECTIONS": "20",
        "IOFLEET_AUTOSCALER_MIN": "2",
        "IOFLEET_AUTOSCALER_MAX": "5",
        "IOFLEET_AUTOSCALER_SYNC_SECONDS": "0.5",
        "IOFLEET_AUTOSCALER_SCRAPE_SECONDS": "0.2",
    }


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "--backend", "kubernetes", *args,
        env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_runs_from_the_infra_env_and_stops_on_sigterm(
    kmock: kmock.KubernetesEmulator, pki: Pki, tmp_path: Path
) -> None:
    seed_cluster(kmock, pki)
    env = process_env(kmock, pki, tmp_path)
    process = await start(env)
    status_url = f"http://127.0.0.1:{env['IOFLEET_AUTOSCALER_STATUS_PORT']}/status"
    ready_url = f"https://127.0.0.1:{env['IOFLEET_AUTOSCALER_METRICS_PORT']}/readyz"
    try:
        body = None
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(status_url) as response:
                        body = await response.json()
                    async with session.get(
                        ready_url, ssl=client_context(pki.server_ca, None)
                    ) as response:
                        ready = response.status
                    if body["timeline"] and ready == 200:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        assert body is not None and body["timeline"], "no sync within 10 s"
        # No pod answers on the admin port: both are missing, so the count stays.
        assert {n["name"] for n in body["nodes"]} == {"server-a", "server-b"}
        assert all(n["connections"] is None and n["error"] for n in body["nodes"])
        assert body["timeline"][-1]["desired"] == body["timeline"][-1]["current"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 15)
    _, stderr = await process.communicate()
    assert code == 0, stderr.decode()
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert "autoscaler.started" in {line.get("event") for line in lines}


@pytest.mark.parametrize("how", ["--mode direct", "IOFLEET_AUTOSCALER_MODE=direct"])
async def test_direct_mode_beside_an_hpa_exits_2_with_one_line(
    kmock: kmock.KubernetesEmulator, pki: Pki, tmp_path: Path, how: str
) -> None:
    seed_cluster(kmock, pki)
    kmock.objects[HPAS, NS, "iofleet-server"] = _hpa("iofleet-server", "iofleet-server")
    env = process_env(kmock, pki, tmp_path)
    args: list[str] = []
    if how.startswith("--"):
        args = how.split()
    else:
        key, value = how.split("=")
        env[key] = value
    process = await start(env, *args)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert stderr.decode().strip().splitlines() == [
        "autoscaler: --mode direct: HorizontalPodAutoscaler iofleet/iofleet-server already"
        " scales deployment/iofleet-server; remove it or use --mode hpa"
    ]
