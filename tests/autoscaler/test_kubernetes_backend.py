"""The Kubernetes backend against kmock (a mock API server on a real socket) and tiny
real HTTP servers on 127.0.0.x standing in for the pods' admin ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from aiohttp import web
from kmock import method as kmock_method
from lightkube import AsyncClient, KubeConfig

from autoscaler.controller import Controller
from autoscaler.kube.actuator import (
    DeletionCostKeeper,
    KubernetesActuator,
    RefuseToStart,
)
from autoscaler.kube.source import DELETION_COST, KubernetesSource
from autoscaler.policy import ScalingPolicy, ScalingRules, Spec
from iofleet.processes import free_port

NS = "iofleet"
LABELS = {"app.kubernetes.io/name": "iofleet-server"}
PODS = kmock.resource("", "v1", "pods")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
HPAS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")


def pod(name: str, ip: str, ready: bool = True, labels: dict[str, str] = LABELS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def client_for(server: kmock.RawHandler) -> AsyncClient:
    config = KubeConfig.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url)}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "current-context": "kmock",
        }
    )
    return AsyncClient(config=config)


class AdminPorts:
    """Real HTTP servers answering /metrics on 127.0.0.x, one per pod, one shared port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections: dict[str, float] = {}
        self._runners: list[web.AppRunner] = []

    async def serve(self, ip: str, *, hang: bool = False) -> None:
        async def metrics(request: web.Request) -> web.Response:
            if hang:
                await asyncio.sleep(30)
            value = self.connections[ip]
            return web.Response(
                text=f"# HELP iofleet_connections c\n# TYPE iofleet_connections gauge\n"
                f"iofleet_connections {value}\n"
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, ip, self.port).start()
        self._runners.append(runner)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@pytest.fixture
async def admin() -> AsyncIterator[AdminPorts]:
    ports = AdminPorts()
    try:
        yield ports
    finally:
        await ports.close()


@pytest.fixture
async def client(kmock: kmock.KubernetesEmulator) -> AsyncIterator[AsyncClient]:
    api = client_for(kmock)
    try:
        yield api
    finally:
        await api.close()


def make_source(client: AsyncClient, admin: AdminPorts) -> KubernetesSource:
    return KubernetesSource(
        client, NS, LABELS, admin.port, "iofleet_connections",
        scrape_interval=0.2, scrape_timeout=0.5,
    )  # fmt: skip


async def watched(source: KubernetesSource) -> asyncio.Task[None]:
    task = asyncio.create_task(source.watch_pods())
    await asyncio.wait_for(source.synced.wait(), 5)
    return task


async def test_discovers_pods_by_selector_and_scrapes_with_a_dead_and_a_hung_pod(
    kmock: kmock.KubernetesEmulator, client: AsyncClient, admin: AdminPorts
) -> None:
    admin.connections = {"127.0.0.2": 7, "127.0.0.3": 3}
    await admin.serve("127.0.0.2")
    await admin.serve("127.0.0.3")
    await admin.serve("127.0.0.5", hang=True)
    kmock.objects[PODS, NS, "a"] = pod("a", "127.0.0.2")
    kmock.objects[PODS, NS, "b"] = pod("b", "127.0.0.3")
    kmock.objects[PODS, NS, "dead"] = pod("dead", "127.0.0.4")  # nothing listens there
    kmock.objects[PODS, NS, "hung"] = pod("hung", "127.0.0.5")
    kmock.objects[PODS, NS, "starting"] = pod("starting", "127.0.0.6", ready=False)
    kmock.objects[PODS, NS, "stranger"] = pod("stranger", "127.0.0.7", labels={"app": "x"})
    source = make_source(client, admin)
    task = await watched(source)
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            started = asyncio.get_running_loop().time()
            await source.scrape_round(session)
            took = asyncio.get_running_loop().time() - started
        nodes = {node.name: node for node in source.nodes()}
        assert set(nodes) == {"a", "b", "dead", "hung", "starting"}
        assert (nodes["a"].connections, nodes["b"].connections) == (7, 3)
        assert nodes["a"].scraped_at is not None
        assert nodes["dead"].connections is None and "Connect" in (nodes["dead"].error or "")
        assert nodes["hung"].connections is None
        assert nodes["hung"].error == "no answer within 0.5s"
        assert nodes["starting"].connections is None and nodes["starting"].error == "not ready"
        assert took < 1.5  # concurrent: one timeout, not one per pod
        # A pod that appears later is seen through the watch.
        await admin.serve("127.0.0.8")
        admin.connections["127.0.0.8"] = 1
        await client.create(_pod_model(pod("c", "127.0.0.8")))
        for _ in range(50):
            if "c" in {n.name for n in source.nodes()}:
                break
            await asyncio.sleep(0.05)
        assert "c" in {n.name for n in source.nodes()}
    finally:
        task.cancel()


def _pod_model(raw: dict[str, Any]) -> Any:
    from lightkube.resources.core_v1 import Pod

    return Pod.from_dict(raw)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_deletion_cost_ranks_emptiest_lowest_and_patches_at_most_once_a_minute(
    kmock: kmock.KubernetesEmulator, client: AsyncClient, admin: AdminPorts
) -> None:
    admin.connections = {"127.0.0.2": 30, "127.0.0.3": 5, "127.0.0.4": 12}
    for ip in admin.connections:
        await admin.serve(ip)
    for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")):
        kmock.objects[PODS, NS, name] = pod(name, ip)
    source = make_source(client, admin)
    task = await watched(source)
    clock = FakeClock()
    keeper = DeletionCostKeeper(client, NS, min_interval=60, clock=clock)

    def costs() -> dict[str, str]:
        return {
            name: kmock.objects[PODS, NS, name]["metadata"]["annotations"][DELETION_COST]
            for name in ("a", "b", "c")
        }

    async def round_and_rank() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            await source.scrape_round(session)
        await asyncio.sleep(0.2)  # the watch delivers our own patches back
        await keeper.rank(source.nodes())
        await asyncio.sleep(0.2)

    try:
        await round_and_rank()
        assert costs() == {"b": "0", "c": "1", "a": "2"}  # 5 < 12 < 30
        assert keeper.patches == 3
        # b fills up; ranks change, but within the minute nothing is patched.
        admin.connections["127.0.0.3"] = 50
        clock.now += 30
        await round_and_rank()
        assert keeper.patches == 3
        assert costs() == {"b": "0", "c": "1", "a": "2"}
        # After the minute: order now c=12, a=30, b=50 -> c 0, a 1, b 2 (all changed).
        clock.now += 31
        await round_and_rank()
        assert costs() == {"c": "0", "a": "1", "b": "2"}
        assert keeper.patches == 6
        # Same ranks later on: no patch at all.
        clock.now += 120
        await round_and_rank()
        assert keeper.patches == 6
    finally:
        task.cancel()


SPEC = Spec(
    target=20,
    min_replicas=2,
    max_replicas=5,
    scale_up=ScalingRules(0, "Max", (ScalingPolicy("Pods", 4, 15),)),
)


async def test_direct_mode_scales_the_deployment_through_its_scale_subresource(
    kmock: kmock.KubernetesEmulator, client: AsyncClient, admin: AdminPorts
) -> None:
    admin.connections = {"127.0.0.2": 60, "127.0.0.3": 60}
    for ip in admin.connections:
        await admin.serve(ip)
    kmock.objects[PODS, NS, "a"] = pod("a", "127.0.0.2")
    kmock.objects[PODS, NS, "b"] = pod("b", "127.0.0.3")
    kmock.objects[DEPLOYMENTS, NS, "iofleet-server"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iofleet-server", "namespace": NS},
        "spec": {"replicas": 2},
    }
    kmock.objects[HPAS, NS, "unrelated"] = _hpa("unrelated", "some-other-deployment")
    source = make_source(client, admin)
    task = await watched(source)
    actuator = KubernetesActuator(
        client, NS, "iofleet-server", direct=True,
        costs=DeletionCostKeeper(client, NS, min_interval=60),
    )  # fmt: skip
    try:
        await actuator.check_no_hpa()  # an HPA on another Deployment does not count
        import aiohttp

        async with aiohttp.ClientSession() as session:
            await source.scrape_round(session)
        controller = Controller(SPEC, source, actuator, sync_seconds=15)
        decision = await controller.sync()
        # 120 connections / (20 x 2) = 3 -> ceil(3 x 2) = 6 -> max 5.
        assert (decision.current, decision.desired) == (2, 5)
        patches = [
            r for r in kmock if r.method == kmock_method.PATCH and r.url.path.endswith("/scale")
        ]
        assert [r.data for r in patches] == [{"spec": {"replicas": 5}}]
        assert kmock.objects[DEPLOYMENTS, NS, "iofleet-server"]["spec"]["replicas"] == 5
        assert controller.status()["timeline"][-1]["acted"] is True
    finally:
        task.cancel()


def _hpa(name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 2,
            "maxReplicas": 5,
        },
    }


async def test_direct_mode_refuses_to_start_next_to_an_hpa_on_the_same_deployment(
    kmock: kmock.KubernetesEmulator, client: AsyncClient
) -> None:
    kmock.objects[HPAS, NS, "iofleet-server"] = _hpa("iofleet-server", "iofleet-server")
    actuator = KubernetesActuator(
        client, NS, "iofleet-server", direct=True,
        costs=DeletionCostKeeper(client, NS, min_interval=60),
    )  # fmt: skip
    with pytest.raises(RefuseToStart) as refused:
        await actuator.check_no_hpa()
    message = str(refused.value)
    assert "\n" not in message
    assert "HorizontalPodAutoscaler iofleet/iofleet-server already scales" in message
    # hpa mode never writes the scale subresource.
    hpa_mode = KubernetesActuator(
        client, NS, "iofleet-server", direct=False,
        costs=DeletionCostKeeper(client, NS, min_interval=60),
    )  # fmt: skip
    await hpa_mode.scale(7)
    assert not [r for r in kmock if r.url.path.endswith("/scale")]


def test_pod_view_reads_readiness_deletion_and_cost() -> None:
    from lightkube.resources.core_v1 import Pod

    from autoscaler.kube.source import pod_view

    raw = pod("a", "10.0.0.1")
    assert pod_view(Pod.from_dict(raw)).ready is True
    not_ready = pod("b", "10.0.0.2", ready=False)
    assert pod_view(Pod.from_dict(not_ready)).ready is False
    deleting = pod("c", "10.0.0.3")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deleting["metadata"]["annotations"] = {DELETION_COST: "3"}
    view = pod_view(Pod.from_dict(deleting))
    assert (view.deleting, view.deletion_cost) == (True, 3)
    failed = pod("d", "10.0.0.4")
    failed["status"]["phase"] = "Failed"
    failed["metadata"]["annotations"] = {DELETION_COST: "not a number"}
    view = pod_view(Pod.from_dict(failed))
    assert (view.deleting, view.ready, view.deletion_cost) == (True, False, None)
