"""The whole Kubernetes backend wired by `autoscaler.kube.backend.run`: kmock as the API
server, two real `python -m server` processes as the pods (admin listeners on
127.0.0.2 and 127.0.0.3, one shared port, as pods share a port on their own IPs),
stock python-socketio clients holding connections, the metrics API over HTTPS, and
the status page in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import kmock
import pytest
import socketio
from lightkube import AsyncClient

from autoscaler.kube.actuator import RefuseToStart
from autoscaler.kube.backend import run
from autoscaler.settings import Settings
from iofleet.processes import free_port
from tests.autoscaler.certs import Pki, client_context
from tests.autoscaler.test_kubernetes_backend import (
    DEPLOYMENTS,
    HPAS,
    LABELS,
    NS,
    PODS,
    _hpa,
    client_for,
    pod,
)
from tests.support.cdp import Chromium
from tests.support.procs import ServerProcess, wait_until

CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SARS = kmock.resource("authorization.k8s.io", "v1", "subjectaccessreviews")
POD_IPS = {"server-a": "127.0.0.2", "server-b": "127.0.0.3"}
HEADERS = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}


@pytest.fixture
def admin_port() -> int:
    return free_port()


@pytest.fixture
def servers(admin_port: int) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for name, ip in POD_IPS.items():
            env = {"IOFLEET_HOST": ip, "IOFLEET_AUTH": "none", "IOFLEET_CORS_ORIGINS": ""}
            started[name] = ServerProcess(name, env=env, admin_port=admin_port).start(
                wait_ready=False
            )
        for name in started:
            url = f"http://{POD_IPS[name]}:{admin_port}/readyz"
            wait_until(lambda url=url: _status(url) == 200, timeout=20)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status)
    except (urllib.error.URLError, OSError):
        return 0


@dataclass
class Running:
    settings: Settings
    task: asyncio.Task[None]
    pki: Pki

    @property
    def metrics_url(self) -> str:
        return f"https://127.0.0.1:{self.settings.metrics_port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.status_port}"


def seed_cluster(server: kmock.KubernetesEmulator, pki: Pki) -> None:
    server.objects[CONFIGMAPS, "kube-system", "extension-apiserver-authentication"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "requestheader-client-ca-file": pki.requestheader_ca.pem,
            "requestheader-allowed-names": '["front-proxy-client"]',
            "requestheader-username-headers": '["X-Remote-User"]',
        },
    }
    for name, ip in POD_IPS.items():
        server.objects[PODS, NS, name] = pod(name, ip)
    server.objects[DEPLOYMENTS, NS, "iofleet-server"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iofleet-server", "namespace": NS},
        "spec": {"replicas": 2},
    }
    server.objects[HPAS, NS, "other"] = _hpa("other", "another-deployment")

    def review(request: Any) -> dict[str, Any]:
        # Reviews are never stored by a real apiserver; kmock's emulator keeps this
        # nameless object and would answer the next create 409, so forget it.
        del server.objects[SARS, None, None]
        spec = request.data["spec"]
        return {**request.data, "status": {"allowed": spec["user"] == HEADERS["X-Remote-User"]}}

    server["post", SARS] << review


def settings_for(pki: Pki, admin_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mode": "direct",
        "namespace": NS,
        "deployment": "iofleet-server",
        "pod_selector": ",".join(f"{k}={v}" for k, v in LABELS.items()),
        "admin_port": admin_port,
        "metrics_host": "127.0.0.1",
        "metrics_port": free_port(),
        "tls_cert_file": pki.serving.cert,
        "tls_key_file": pki.serving.key,
        "status_port": free_port(),
        "target_connections": 1,
        "min": 1,
        "max": 4,
        "sync_seconds": 0.5,
        "scrape_seconds": 0.2,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
async def k8s(kmock: kmock.KubernetesEmulator) -> AsyncIterator[AsyncClient]:
    api = client_for(kmock)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def running(
    kmock: kmock.KubernetesEmulator,
    k8s: AsyncClient,
    pki: Pki,
    admin_port: int,
    servers: dict[str, ServerProcess],
) -> AsyncIterator[Running]:
    seed_cluster(kmock, pki)
    settings = settings_for(pki, admin_port)
    clients: list[socketio.AsyncClient] = []
    task: asyncio.Task[None] | None = None
    try:
        # Three stock clients on server-a, none on server-b, before the autoscaler starts
        # (a rank patched on its first round stands for a minute).
        for _ in range(3):
            sio = socketio.AsyncClient(reconnection=False)
            await sio.connect(servers["server-a"].url.replace("127.0.0.1", "127.0.0.2"),
                              transports=["websocket"])  # fmt: skip
            clients.append(sio)
        task = asyncio.create_task(run(settings, k8s))
        yield Running(settings, task, pki)
    finally:
        for sio in clients:
            await sio.disconnect()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _get_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def _eventually(check: Any, within: float = 15) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            result = await check()
            if result:
                return result
        except (aiohttp.ClientError, AssertionError, KeyError, TypeError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.2)


async def test_serves_real_connection_counts_and_scales_directly(
    running: Running, kmock: kmock.KubernetesEmulator
) -> None:
    context = client_context(running.pki.server_ca, running.pki.aggregator)
    probe = client_context(running.pki.server_ca, None)

    async def ready() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{running.metrics_url}/readyz", ssl=probe) as response,
        ):
            return response.status == 200

    await _eventually(ready)
    path = (
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/iofleet/pods/*/iofleet_connections"
        "?labelSelector=app.kubernetes.io%2Fname%3Diofleet-server"
    )

    async def values() -> dict[str, str] | None:
        status, body = await _get_json(running.metrics_url + path, ssl=context, headers=HEADERS)
        assert status == 200
        found = {item["describedObject"]["name"]: item["value"] for item in body["items"]}
        return found if found == {"server-a": "3", "server-b": "0"} else None

    assert await _eventually(values) == {"server-a": "3", "server-b": "0"}

    # 3 connections / (target 1 x 2 ready) = 1.5 -> ceil(1.5 x 2) = 3 replicas.
    async def scaled() -> bool:
        deployment = kmock.objects[DEPLOYMENTS, NS, "iofleet-server"]
        return bool(deployment["spec"]["replicas"] == 3)

    await _eventually(scaled)
    status, body = await _get_json(running.status_url + "/status")
    assert status == 200
    nodes = {node["name"]: node for node in body["nodes"]}
    assert nodes["server-a"]["connections"] == 3
    assert nodes["server-a"]["age_s"] is not None and nodes["server-a"]["age_s"] < 5
    assert nodes["server-b"]["deletion_cost"] == 0  # the emptiest goes first
    acted = [point for point in body["timeline"] if point["acted"]]
    assert acted[0]["current"] == 2 and acted[0]["desired"] == 3
    assert "above target" in acted[0]["reason"]


async def test_status_page_draws_the_chart_in_chromium(running: Running) -> None:
    async def decided() -> bool:
        _, body = await _get_json(running.status_url + "/status")
        return any(point["acted"] for point in body["timeline"])

    await _eventually(decided)
    browser = await Chromium().start()
    try:
        page = await browser.new_page(running.status_url + "/")
        await page.wait_for(
            "document.querySelector('#chart path.connections') !== null"
            " && document.querySelector('#chart path.desired') !== null"
            " && document.querySelectorAll('#chart circle.decision').length > 0"
            " && document.querySelectorAll('#nodes tbody tr').length === 2"
        )
        reason = await page.evaluate(
            "document.querySelector('#chart circle.decision title').textContent"
        )
        assert reason.startswith("2 → 3: ") and "above target" in reason
        rows = await page.evaluate(
            "[...document.querySelectorAll('#nodes tbody tr')].map(r => r.cells[3].textContent)"
        )
        assert rows == ["3", "0"]
    finally:
        await browser.stop()


async def test_direct_mode_refuses_to_start_beside_an_hpa(
    kmock: kmock.KubernetesEmulator, k8s: AsyncClient, pki: Pki
) -> None:
    seed_cluster(kmock, pki)
    kmock.objects[HPAS, NS, "iofleet-server"] = _hpa("iofleet-server", "iofleet-server")
    with pytest.raises(RefuseToStart, match="already scales deployment/iofleet-server"):
        await run(settings_for(pki, free_port()), k8s)
