"""Wiring of the Kubernetes backend: parts built from settings, run until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import web
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap

from autoscaler.controller import Controller, spec_from_settings
from autoscaler.kube.actuator import DeletionCostKeeper, KubernetesActuator, RefuseToStart
from autoscaler.kube.authz import SubjectAccessReviewer
from autoscaler.kube.metrics_api import RequestHeaderAuth, create_metrics_app, server_ssl_context
from autoscaler.kube.provider import ConnectionsProvider
from autoscaler.kube.source import KubernetesSource
from autoscaler.settings import Settings
from autoscaler.status import create_status_app

log = logging.getLogger("iofleet.autoscaler")
AUTH_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")


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
        ssl_context = server_ssl_context(settings.tls_cert_file, settings.tls_key_file, auth)
    except (OSError, ValueError) as error:
        raise RefuseToStart(f"cannot load the TLS cert/key or the client CA: {error}") from None
    metrics_app = create_metrics_app(
        backend.provider,
        auth,
        backend.source.synced.is_set,
        settings.metric_window_seconds,
        SubjectAccessReviewer(client),
    )
    runners = [web.AppRunner(metrics_app, access_log=None)]
    sites: list[web.BaseSite] = []
    await runners[0].setup()
    sites.append(
        web.TCPSite(
            runners[0], settings.metrics_host, settings.metrics_port, ssl_context=ssl_context
        )
    )
    if settings.status_port:
        status_runner = web.AppRunner(create_status_app(backend.controller.status), access_log=None)
        await status_runner.setup()
        runners.append(status_runner)
        sites.append(web.TCPSite(status_runner, settings.status_host, settings.status_port))
    tasks: list[asyncio.Task[None]] = []
    try:
        for site in sites:
            await site.start()
        tasks = [
            asyncio.create_task(backend.source.watch_pods(), name="watch-pods"),
            asyncio.create_task(backend.source.scrape_forever(), name="scrape"),
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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for runner in runners:
            await runner.cleanup()
