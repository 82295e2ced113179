"""Moves the fleet on Kubernetes: pod-deletion-cost on every server pod (both modes),
and in direct mode the Deployment's `scale` subresource."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import Pod

from autoscaler.kube.source import DELETION_COST
from autoscaler.model import Node

log = logging.getLogger("iofleet.autoscaler.actuator")


class RefuseToStart(Exception):
    """The autoscaler must not run as configured; the message is one line saying why."""


def deletion_ranks(nodes: Sequence[Node]) -> dict[str, int]:
    """Rank 0 for the emptiest pod. A pod without a value ranks first: it serves nobody we
    can see. Ties break by name so the ranking is stable between rounds."""
    live = [node for node in nodes if not node.deleting]
    ordered = sorted(
        live,
        key=lambda n: (n.connections is not None, n.connections or 0.0, n.name),
    )
    return {node.name: rank for rank, node in enumerate(ordered)}


class DeletionCostKeeper:
    """Patches `controller.kubernetes.io/pod-deletion-cost` with each pod's rank: only when
    the rank changed, and at most once per `min_interval` per pod (every patch is an API
    write and a ReplicaSet resync)."""

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        min_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._min_interval = min_interval
        self._clock = clock
        self._last_patch: dict[str, float] = {}
        self.patches = 0

    async def rank(self, nodes: Sequence[Node]) -> None:
        now = self._clock()
        names = {node.name for node in nodes}
        for name in list(self._last_patch):
            if name not in names:
                del self._last_patch[name]
        current = {node.name: node.deletion_cost for node in nodes}
        for name, rank in deletion_ranks(nodes).items():
            if current.get(name) == rank:
                continue
            last = self._last_patch.get(name)
            if last is not None and now - last < self._min_interval:
                continue
            patch = {"metadata": {"annotations": {DELETION_COST: str(rank)}}}
            try:
                await self._client.patch(Pod, name, patch, namespace=self._namespace)
            except ApiError as error:
                log.warning(
                    "deletion-cost patch of %s failed: %s", name, error,
                    extra={"event": "actuator.patch_failed"},
                )  # fmt: skip
                continue
            self._last_patch[name] = now
            self.patches += 1


class KubernetesActuator:
    """hpa mode: an HPA owns the replica count; we only rank. direct mode: we scale the
    Deployment through its `scale` subresource too."""

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        deployment: str,
        direct: bool,
        costs: DeletionCostKeeper,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._deployment = deployment
        self._direct = direct
        self._costs = costs
        self._pods_seen = 0

    @property
    def owns_replicas(self) -> bool:
        return self._direct

    async def check_no_hpa(self) -> None:
        """Direct mode must be the only owner of the replica count."""
        try:
            hpas = [
                hpa
                async for hpa in self._client.list(
                    HorizontalPodAutoscaler, namespace=self._namespace
                )
            ]
        except ApiError as error:
            raise RefuseToStart(
                f"--mode direct: cannot check for an HPA on deployment/{self._deployment}"
                f" ({error.status.code} {error.status.reason}); grant list on"
                " horizontalpodautoscalers or use --mode hpa"
            ) from None
        for hpa in hpas:
            ref = hpa.spec.scaleTargetRef if hpa.spec else None
            if ref and ref.kind == "Deployment" and ref.name == self._deployment:
                name = hpa.metadata.name if hpa.metadata else "?"
                raise RefuseToStart(
                    f"--mode direct: HorizontalPodAutoscaler {self._namespace}/{name} already"
                    f" scales deployment/{self._deployment}; remove it or use --mode hpa"
                )

    async def current_replicas(self) -> int:
        if not self._direct:  # hpa mode has no RBAC on the scale subresource: count pods
            return self._pods_seen
        scale = await self._client.get(
            Deployment.Scale, self._deployment, namespace=self._namespace
        )
        return (scale.spec.replicas if scale.spec else None) or 0

    async def scale(self, replicas: int) -> None:
        if not self._direct:
            return
        await self._client.patch(
            Deployment.Scale,
            self._deployment,
            {"spec": {"replicas": replicas}},
            namespace=self._namespace,
        )

    async def rank(self, nodes: Sequence[Node]) -> None:
        self._pods_seen = sum(1 for node in nodes if not node.deleting)
        await self._costs.rank(nodes)
