"""Wiring of the Kubernetes backend: parts built from settings, run until cancelled."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap

from autoscaler.controller import Controller, spec_from_settings
from autoscaler.kube.actuator import DeletionCostKeeper, KubernetesActuator, RefuseToStart
from autoscaler.kube.authz import SubjectAccessReviewer
from autoscaler.kube.metrics_api import (
    ClientTrust,
    HttpsListener,
    RequestHeaderAuth,
    create_metrics_app,
)
from autoscaler.kube.provider import ConnectionsProvider
from autoscaler.kube.source import KubernetesSource
from autoscaler.settings import Settings
from autoscaler.status import create_status_app
from autoscaler.tasks import stop_tasks

log = logging.getLogger("iofleet.autoscaler")
AUTH_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
TRUST_REFRESH_SECONDS = 60.0


@dataclass
class KubernetesBackend:
    source: KubernetesSource
    actuator: KubernetesActuator
    controller: Controller
    provider: ConnectionsProvider


def build(settings: Settings, client: AsyncClient) -> KubernetesBackend:
    source = KubernetesSource(
        client,
        settings.namespace,
        settings.labels,
        settings.admin_port,
        settings.metric,
        scrape_interval=settings.scrape_seconds,
        scrape_timeout=settings.scrape_timeout,
    )
    costs = DeletionCostKeeper(client, settings.namespace, settings.deletion_cost_interval)
    actuator = KubernetesActuator(
        client, settings.namespace, settings.deployment, settings.mode == "direct", costs
    )
    controller = Controller(spec_from_settings(settings), source, actuator, settings.sync_seconds)
    provider = ConnectionsProvider(source.nodes, settings.namespace, settings.metric)
    return KubernetesBackend(source, actuator, controller, provider)


async def read_request_header_auth(client: AsyncClient) -> RequestHeaderAuth:
    namespace, name = AUTH_CONFIGMAP
    try:
        configmap = await client.get(ConfigMap, name, namespace=namespace)
    except ApiError as error:
        raise RefuseToStart(
            f"cannot read {namespace}/{name} ({error.status.code} {error.status.reason}):"
            " the request-header CA is needed to know the kube-apiserver"
        ) from None
    try:
        return RequestHeaderAuth.from_configmap_data(dict(configmap.data or {}))
    except ValueError as error:
        raise RefuseToStart(str(error)) from None


async def refresh_trust(
    client: AsyncClient,
    trust: ClientTrust,
    listener: HttpsListener,
    every: float = TRUST_REFRESH_SECONDS,
) -> None:
    """Pick up a rotated request-header CA or serving cert; keep the old on any error."""
    while True:
        await asyncio.sleep(every)
        try:
            if trust.update(await read_request_header_auth(client)):
                await listener.restart()
                log.info("client trust reloaded", extra={"event": "api.trust_reloaded"})
        except (RefuseToStart, OSError, ValueError) as error:
            log.warning("client trust not reloaded: %s", error, extra={"event": "api.trust_stale"})


async def run(settings: Settings, client: AsyncClient) -> None:
    """Check what must hold before starting (or raise RefuseToStart), then serve."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise RefuseToStart(
            "the kubernetes backend serves custom.metrics.k8s.io over HTTPS: set"
            " IOFLEET_AUTOSCALER_TLS_CERT_FILE and IOFLEET_AUTOSCALER_TLS_KEY_FILE"
        )
    backend = build(settings, client)
    if settings.mode == "direct":
        await backend.actuator.check_no_hpa()
    auth = await read_request_header_auth(client)
    try:
        trust = ClientTrust(settings.tls_cert_file, settings.tls_key_file, auth)
    except (OSError, ValueError) as error:
        raise RefuseToStart(f"cannot load the TLS cert/key or the client CA: {error}") from None
    metrics_app = create_metrics_app(
        backend.provider,
        trust,
        backend.source.synced.is_set,
        settings.metric_window_seconds,
        SubjectAccessReviewer(client),
    )
    metrics_runner = web.AppRunner(metrics_app, access_log=None)
    await metrics_runner.setup()
    runners = [metrics_runner]
    listener = HttpsListener(metrics_runner, settings.metrics_host, settings.metrics_port, trust)
    status_site: web.TCPSite | None = None
    if settings.status_port:
        status_runner = web.AppRunner(create_status_app(backend.controller.status), access_log=None)
        await status_runner.setup()
        runners.append(status_runner)
        status_site = web.TCPSite(status_runner, settings.status_host, settings.status_port)
    tasks: list[asyncio.Task[None]] = []
    try:
        await listener.start()
        if status_site is not None:
            await status_site.start()
        tasks = [
            asyncio.create_task(backend.source.watch_pods(), name="watch-pods"),
            asyncio.create_task(backend.source.scrape_forever(), name="scrape"),
            asyncio.create_task(refresh_trust(client, trust, listener), name="refresh-trust"),
        ]
        # Rank and decide only on scraped numbers: before the first round every pod
        # looks missing, and a rank patched then would stand for a minute.
        await backend.source.synced.wait()
        await backend.source.scraped.wait()
        tasks.append(asyncio.create_task(backend.controller.run(), name="control-loop"))
        log.info(
            "serving custom.metrics.k8s.io on :%d, status on %s:%d, mode %s",
            settings.metrics_port, settings.status_host, settings.status_port, settings.mode,
            extra={"event": "autoscaler.started"},
        )  # fmt: skip
        await asyncio.gather(*tasks)
    finally:
        await stop_tasks(tasks, log)
        for runner in runners:
            await runner.cleanup()
