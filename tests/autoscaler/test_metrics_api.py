"""custom.metrics.k8s.io over real HTTPS, requests shaped like the kube-apiserver
aggregator's: client cert from the request-header CA, `X-Remote-User`, HPA paths."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from autoscaler.kube.authz import Access, Caller
from autoscaler.kube.metrics_api import (
    ClientTrust,
    HttpsListener,
    RequestHeaderAuth,
    create_metrics_app,
    quantity,
    server_ssl_context,
)
from autoscaler.kube.provider import ConnectionsProvider
from autoscaler.model import Node
from iofleet.processes import free_port
from tests.autoscaler.certs import CA, Issued, client_context

NS = "iofleet"
METRIC = "iofleet_connections"
LABELS = {"app.kubernetes.io/name": "iofleet-server"}
SCRAPED_AT = 1_700_000_000.0  # 2023-11-14T22:13:20Z
AGGREGATOR_HEADERS = {
    "X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
}


def nodes() -> list[Node]:
    return [
        Node("server-a", "10.0.0.1", True, connections=12, scraped_at=SCRAPED_AT, labels=LABELS),
        Node("server-b", "10.0.0.2", True, connections=2.5, scraped_at=SCRAPED_AT, labels=LABELS),
        Node("server-c", "10.0.0.3", True, error="timeout", labels=LABELS),  # missing
        Node("other", "10.0.0.9", True, connections=7, scraped_at=SCRAPED_AT, labels={"x": "y"}),
    ]


class HpaOnly:
    """Stands in for the SubjectAccessReview (tested against kmock in test_authz.py):
    allows the HPA controller's service account, records every question."""

    def __init__(self) -> None:
        self.asked: list[tuple[Caller, Access]] = []

    async def allowed(self, caller: Caller, access: Access) -> bool:
        self.asked.append((caller, access))
        return caller.user == AGGREGATOR_HEADERS["X-Remote-User"]


@dataclass
class Api:
    url: str
    server_ca: CA
    aggregator: Issued
    stranger: Issued
    wrong_name: Issued
    authorizer: HpaOnly
    trust: ClientTrust
    listener: HttpsListener
    tmp: Path

    async def get(
        self, path: str, client: Issued | None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        context = client_context(self.server_ca, client)
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, ssl=context, headers=headers or {}) as response,
        ):
            body = await response.json(content_type=None)
            return response.status, body

    async def aggregator_get(self, path: str) -> tuple[int, Any]:
        return await self.get(path, self.aggregator, AGGREGATOR_HEADERS)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    server_ca = CA(tmp_path, "serving-ca")
    serving = server_ca.issue("iofleet-autoscaler.iofleet.svc", server=True)
    requestheader_ca = CA(tmp_path, "front-proxy-ca")
    aggregator = requestheader_ca.issue("front-proxy-client", server=False)
    wrong_name = requestheader_ca.issue("someone-else", server=False)
    stranger = CA(tmp_path, "stranger-ca").issue("front-proxy-client-2", server=False)
    auth = RequestHeaderAuth.from_configmap_data(
        {
            "requestheader-client-ca-file": requestheader_ca.pem,
            "requestheader-allowed-names": '["front-proxy-client"]',
            "requestheader-username-headers": '["X-Remote-User"]',
        }
    )
    provider = ConnectionsProvider(nodes, NS, METRIC)
    authorizer = HpaOnly()
    trust = ClientTrust(serving.cert, serving.key, auth)
    app = create_metrics_app(provider, trust, lambda: True, 15, authorizer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    listener = HttpsListener(runner, "127.0.0.1", port, trust)
    await listener.start()
    try:
        yield Api(
            f"https://127.0.0.1:{port}",
            server_ca, aggregator, stranger, wrong_name, authorizer, trust, listener, tmp_path,
        )  # fmt: skip
    finally:
        await runner.cleanup()


PODS_PATH = "/apis/custom.metrics.k8s.io/{v}/namespaces/iofleet/pods/{name}/iofleet_connections"
SELECTOR = "?labelSelector=app.kubernetes.io%2Fname%3Diofleet-server"


async def test_discovery_documents(api: Api) -> None:
    status, body = await api.aggregator_get("/apis")
    assert status == 200
    assert body["kind"] == "APIGroupList"
    (group,) = body["groups"]
    assert group["name"] == "custom.metrics.k8s.io"
    assert [v["version"] for v in group["versions"]] == ["v1beta2", "v1beta1"]
    assert group["preferredVersion"] == {
        "groupVersion": "custom.metrics.k8s.io/v1beta2",
        "version": "v1beta2",
    }
    status, body = await api.aggregator_get("/apis/custom.metrics.k8s.io")
    assert (status, body["kind"], body["name"]) == (200, "APIGroup", "custom.metrics.k8s.io")
    for version in ("v1beta1", "v1beta2"):
        status, body = await api.aggregator_get(f"/apis/custom.metrics.k8s.io/{version}")
        assert status == 200
        assert body["kind"] == "APIResourceList"
        assert body["groupVersion"] == f"custom.metrics.k8s.io/{version}"
        assert body["resources"] == [
            {
                "name": "pods/iofleet_connections",
                "singularName": "",
                "namespaced": True,
                "kind": "MetricValueList",
                "verbs": ["get"],
            }
        ]


async def test_v1beta1_list_by_selector_field_by_field(api: Api) -> None:
    status, body = await api.aggregator_get(PODS_PATH.format(v="v1beta1", name="*") + SELECTOR)
    assert status == 200
    assert body["kind"] == "MetricValueList"
    assert body["apiVersion"] == "custom.metrics.k8s.io/v1beta1"
    assert body["metadata"] == {}
    # server-c did not answer (missing); "other" does not match the selector.
    assert body["items"] == [
        {
            "describedObject": {
                "kind": "Pod", "namespace": NS, "name": "server-a", "apiVersion": "/v1",
            },
            "metricName": METRIC,
            "timestamp": "2023-11-14T22:13:20Z",
            "window": 15,
            "value": "12",
            "selector": None,
        },
        {
            "describedObject": {
                "kind": "Pod", "namespace": NS, "name": "server-b", "apiVersion": "/v1",
            },
            "metricName": METRIC,
            "timestamp": "2023-11-14T22:13:20Z",
            "window": 15,
            "value": "2500m",
            "selector": None,
        },
    ]  # fmt: skip


async def test_v1beta2_single_pod_field_by_field(api: Api) -> None:
    status, body = await api.aggregator_get(PODS_PATH.format(v="v1beta2", name="server-a"))
    assert status == 200
    assert body["apiVersion"] == "custom.metrics.k8s.io/v1beta2"
    assert body["items"] == [
        {
            "describedObject": {
                "kind": "Pod", "namespace": NS, "name": "server-a", "apiVersion": "/v1",
            },
            "metric": {"name": METRIC, "selector": None},
            "timestamp": "2023-11-14T22:13:20Z",
            "windowSeconds": 15,
            "value": "12",
        }
    ]  # fmt: skip


def not_found(message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NotFound",
        "code": 404,
    }


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
async def test_unknown_metric_resource_or_pod_answers_the_api_status(
    api: Api, version: str
) -> None:
    base = f"/apis/custom.metrics.k8s.io/{version}/namespaces/iofleet"
    cases = {
        f"{base}/pods/*/http_requests": (
            "the server could not find the metric http_requests for pods"
        ),
        f"{base}/services/*/iofleet_connections": (
            "the server could not find the metric iofleet_connections for services"
        ),
        f"{base}/pods/server-c/iofleet_connections": (
            "the server could not find the metric iofleet_connections for pods server-c"
        ),
        f"{base}/metrics/iofleet_connections": (
            "the server could not find the metric iofleet_connections for namespaces"
        ),
    }
    for path, message in cases.items():
        status, body = await api.aggregator_get(path)
        assert (status, body) == (404, not_found(message)), path


async def test_other_namespace_lists_nothing(api: Api) -> None:
    path = PODS_PATH.format(v="v1beta2", name="*").replace("/iofleet/", "/default/")
    status, body = await api.aggregator_get(path)
    assert (status, body["items"]) == (200, [])


async def test_requests_without_the_aggregators_identity_are_refused(api: Api) -> None:
    path = PODS_PATH.format(v="v1beta2", name="*")
    status, body = await api.get(path, None, AGGREGATOR_HEADERS)  # no client certificate
    assert (status, body["reason"], body["code"]) == (401, "Unauthorized", 401)
    status, body = await api.get(path, api.wrong_name, AGGREGATOR_HEADERS)  # CN not allowed
    assert (status, body["reason"]) == (403, "Forbidden")
    status, body = await api.get(path, api.aggregator)  # no X-Remote-User
    assert status == 401
    # Authenticated, but the apiserver says this user may not read the metric.
    status, body = await api.get(
        path, api.aggregator, {"X-Remote-User": "jane", "X-Remote-Group": "devs"}
    )
    assert (status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        'user "jane" cannot get resource "pods/iofleet_connections" in API group'
        ' "custom.metrics.k8s.io" in the namespace "iofleet"'
    )
    caller, access = api.authorizer.asked[-1]
    assert caller == Caller("jane", ("devs",))
    assert access == Access(
        path="/apis/custom.metrics.k8s.io/v1beta2/namespaces/iofleet/pods/*/iofleet_connections",
        group="custom.metrics.k8s.io",
        version="v1beta2",
        namespace="iofleet",
        resource="pods",
        name="*",
        subresource="iofleet_connections",
    )
    # A certificate from another CA does not even finish the TLS handshake.
    with pytest.raises(aiohttp.ClientError):
        await api.get(path, api.stranger, AGGREGATOR_HEADERS)


async def test_probes_need_no_certificate(api: Api) -> None:
    context = client_context(api.server_ca, None)
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(api.url + path, ssl=context) as response:
                assert response.status == 200, path


def test_quantities() -> None:
    assert [quantity(v) for v in (0, 12, 2.5, 0.001, 1e6)] == ["0", "12", "2500m", "1m", "1000000"]


def test_tls_context_asks_for_a_client_cert(tmp_path: Path) -> None:
    ca = CA(tmp_path, "ca")
    serving = ca.issue("s", server=True)
    context = server_ssl_context(serving.cert, serving.key, RequestHeaderAuth(ca.pem))
    assert context.verify_mode == ssl.CERT_OPTIONAL


async def test_a_rotated_request_header_ca_is_taken_without_a_restart(api: Api) -> None:
    path = PODS_PATH.format(v="v1beta2", name="*")
    new_ca = CA(api.tmp, "front-proxy-ca-2")
    new_client = new_ca.issue("front-proxy-client", server=False)
    with pytest.raises(aiohttp.ClientError):  # not trusted yet
        await api.get(path, new_client, AGGREGATOR_HEADERS)
    assert api.trust.update(RequestHeaderAuth(new_ca.pem, ("front-proxy-client",)))
    await api.listener.restart()
    status, _ = await api.get(path, new_client, AGGREGATOR_HEADERS)
    assert status == 200
    with pytest.raises(aiohttp.ClientError):  # the old CA is gone
        await api.get(path, api.aggregator, AGGREGATOR_HEADERS)
    assert not api.trust.update(RequestHeaderAuth(new_ca.pem, ("front-proxy-client",)))


async def test_a_bad_label_selector_is_a_bad_request(api: Api) -> None:
    status, body = await api.aggregator_get(
        PODS_PATH.format(v="v1beta1", name="*") + "?labelSelector=a%20b"
    )
    assert (status, body["kind"], body["reason"], body["code"]) == (
        400,
        "Status",
        "BadRequest",
        400,
    )
