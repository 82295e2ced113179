"""SubjectAccessReview against kmock: what is asked, and how long an answer is kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from lightkube import AsyncClient

from autoscaler.kube.authz import Access, Caller, SubjectAccessReviewer
from tests.autoscaler.test_kubernetes_backend import FakeClock, client_for

SARS = kmock.resource("authorization.k8s.io", "v1", "subjectaccessreviews")
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
METRIC_ACCESS = Access(
    path="/apis/custom.metrics.k8s.io/v1beta1/namespaces/iofleet/pods/*/iofleet_connections",
    group="custom.metrics.k8s.io",
    version="v1beta1",
    namespace="iofleet",
    resource="pods",
    name="*",
    subresource="iofleet_connections",
)


@pytest.fixture
async def client(kmock: kmock.KubernetesEmulator) -> AsyncIterator[AsyncClient]:
    def review(request: Any) -> dict[str, Any]:
        # kmock's emulator stores the nameless review and would refuse the next with 409.
        del kmock.objects[SARS, None, None]
        spec = request.data["spec"]
        return {**request.data, "status": {"allowed": spec["user"] == HPA_USER}}

    kmock["post", SARS] << review
    api = client_for(kmock)
    try:
        yield api
    finally:
        await api.close()


def asked(server: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    return [request.data["spec"] for request in server if request.url.path.endswith("reviews")]


async def test_asks_the_apiserver_with_the_callers_identity_and_the_resource(
    kmock: kmock.KubernetesEmulator, client: AsyncClient
) -> None:
    reviewer = SubjectAccessReviewer(client)
    caller = Caller(HPA_USER, ("system:serviceaccounts",), (("scopes", ("a", "b")),))
    assert await reviewer.allowed(caller, METRIC_ACCESS) is True
    assert await reviewer.allowed(Caller("jane"), Access(path="/apis")) is False
    assert asked(kmock) == [
        {
            "user": HPA_USER,
            "groups": ["system:serviceaccounts"],
            "extra": {"scopes": ["a", "b"]},
            "resourceAttributes": {
                "group": "custom.metrics.k8s.io",
                "version": "v1beta1",
                "namespace": "iofleet",
                "resource": "pods",
                "name": "*",
                "subresource": "iofleet_connections",
                "verb": "get",
            },
        },
        {
            "user": "jane",
            "groups": [],
            "nonResourceAttributes": {"path": "/apis", "verb": "get"},
        },
    ]


async def test_answers_are_kept_ten_seconds(
    kmock: kmock.KubernetesEmulator, client: AsyncClient
) -> None:
    clock = FakeClock()
    reviewer = SubjectAccessReviewer(client, clock=clock)
    caller = Caller(HPA_USER)
    for _ in range(5):
        assert await reviewer.allowed(caller, METRIC_ACCESS)
    clock.now += 9.9
    assert await reviewer.allowed(caller, METRIC_ACCESS)
    assert reviewer.reviews == 1
    clock.now += 0.2
    assert await reviewer.allowed(caller, METRIC_ACCESS)
    assert reviewer.reviews == 2
    assert len(asked(kmock)) == 2
