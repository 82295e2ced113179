"""`custom.metrics.k8s.io` v1beta1 and v1beta2 over HTTPS, for the kube-apiserver only.

A thin HTTP layer (routing, discovery documents, request-header authentication,
Status errors) over `ConnectionsProvider`. The kube-apiserver's aggregator calls us
with a client certificate signed by the request-header CA published in
`kube-system/extension-apiserver-authentication`, whose common name is one of
`requestheader-allowed-names`, and the caller's user name in `X-Remote-User`; whether
that user may read the metric is asked of the kube-apiserver (SubjectAccessReview,
`autoscaler.kube.authz`), as the RBAC the infra grants expects. The kubelet's probes
(`/healthz`, `/readyz`) carry no certificate and see nothing else.
"""

from __future__ import annotations

import datetime
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from autoscaler.kube.authz import Access, Authorizer, Caller
from autoscaler.kube.provider import ConnectionsProvider, MetricNotFound, PodMetric
from autoscaler.kube.selectors import parse_selector

log = logging.getLogger("iofleet.autoscaler.api")
GROUP = "custom.metrics.k8s.io"
VERSIONS = ("v1beta2", "v1beta1")  # preferred first
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})

PROVIDER_KEY = web.AppKey("provider", ConnectionsProvider)
AUTHZ_KEY: web.AppKey[Authorizer] = web.AppKey("authorizer")
READY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")
WINDOW_KEY = web.AppKey("window_seconds", int)


@dataclass(frozen=True)
class RequestHeaderAuth:
    """What `extension-apiserver-authentication` says about the aggregator."""

    client_ca_pem: str
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = field(default=("X-Remote-Group",))
    extra_header_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    @classmethod
    def from_configmap_data(cls, data: dict[str, str]) -> RequestHeaderAuth:
        ca = data.get("requestheader-client-ca-file")
        if not ca:
            raise ValueError(
                "kube-system/extension-apiserver-authentication has no"
                " requestheader-client-ca-file: the aggregator is not configured"
            )

        def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            return tuple(json.loads(raw)) if raw else default

        return cls(
            client_ca_pem=ca,
            allowed_names=names("requestheader-allowed-names", ()),
            username_headers=names("requestheader-username-headers", ("X-Remote-User",)),
            group_headers=names("requestheader-group-headers", ("X-Remote-Group",)),
            extra_header_prefixes=names("requestheader-extra-headers-prefix", ("X-Remote-Extra-",)),
        )


def server_ssl_context(cert_file: Path, key_file: Path, auth: RequestHeaderAuth) -> ssl.SSLContext:
    """Serve our cert; ask for a client cert and verify it against the request-header CA.
    Optional, because the kubelet's probes have none; a cert from any other CA fails the
    handshake."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=auth.client_ca_pem)
    return context


class ClientTrust:
    """The serving cert and the request-header CA and names in force. `update` rebuilds the
    TLS context when they changed (the CA rotates with the cluster, the serving cert with
    `pulumi up`); `HttpsListener.restart` then serves new handshakes with it. A new
    context rather than adding to the old one, so a retired CA stops being trusted."""

    def __init__(self, cert_file: Path, key_file: Path, auth: RequestHeaderAuth) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self.auth = auth
        self._files = self._stamp()
        self.context = server_ssl_context(cert_file, key_file, auth)

    def _stamp(self) -> tuple[float, float]:
        return (self._cert_file.stat().st_mtime, self._key_file.stat().st_mtime)

    def update(self, auth: RequestHeaderAuth) -> bool:
        """Rebuild when the CA, the names or the cert files changed; True if it did."""
        stamp = self._stamp()
        if auth == self.auth and stamp == self._files:
            return False
        self.context = server_ssl_context(self._cert_file, self._key_file, auth)
        self.auth, self._files = auth, stamp
        return True


class HttpsListener:
    """The HTTPS site, restartable with a new TLS context; connections already open
    finish on the old one."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, trust: ClientTrust) -> None:
        self._runner, self._host, self._port, self._trust = runner, host, port, trust
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        self._site = web.TCPSite(
            self._runner, self._host, self._port, ssl_context=self._trust.context
        )
        await self._site.start()

    async def restart(self) -> None:
        if self._site is not None:
            await self._site.stop()
        await self.start()


TRUST_KEY = web.AppKey("client_trust", ClientTrust)


def status(code: int, reason: str, message: str) -> web.Response:
    """A `meta/v1` Status, as the API machinery answers errors."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _common_name(peercert: dict[str, Any]) -> str | None:
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@web.middleware
async def authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    auth = request.app[TRUST_KEY].auth
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    if not peercert:
        return status(401, "Unauthorized", "Unauthorized")
    name = _common_name(peercert)
    if auth.allowed_names and name not in auth.allowed_names:
        return status(
            403,
            "Forbidden",
            f"client certificate CN {name!r} is not an allowed request-header name",
        )
    caller = _caller(request, auth)
    if caller is None:
        return status(401, "Unauthorized", "Unauthorized")
    access = _access(request)
    try:
        allowed = await request.app[AUTHZ_KEY].allowed(caller, access)
    except Exception as error:  # the apiserver did not answer: fail closed
        log.warning("SubjectAccessReview failed: %s", error, extra={"event": "api.authz_failed"})
        return status(500, "InternalError", "authorization check failed")
    if not allowed:
        return status(403, "Forbidden", f'user "{caller.user}" cannot {access.describe()}')
    return await handler(request)


def _caller(request: web.Request, auth: RequestHeaderAuth) -> Caller | None:
    user = next((request.headers[h] for h in auth.username_headers if request.headers.get(h)), None)
    if user is None:
        return None
    groups = tuple(g for h in auth.group_headers for g in request.headers.getall(h, []))
    extra: dict[str, list[str]] = {}
    for header, value in request.headers.items():
        for prefix in auth.extra_header_prefixes:
            if header.lower().startswith(prefix.lower()):
                extra.setdefault(header[len(prefix) :].lower(), []).append(value)
    return Caller(user, groups, tuple((k, tuple(v)) for k, v in sorted(extra.items())))


def _access(request: web.Request) -> Access:
    info = request.match_info
    if "resource" not in info:
        return Access(path=request.path)
    return Access(
        path=request.path,
        group=GROUP,
        version=info.get("version"),
        namespace=info.get("namespace"),
        resource=info["resource"],
        name=info.get("name"),
        subresource=info.get("metric"),
    )


def quantity(value: float) -> str:
    """A Kubernetes quantity: an integer as is, anything else in milli-units."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def metric_value(version: str, item: PodMetric, metric: str, window: int) -> dict[str, Any]:
    described = {
        "kind": "Pod",
        "namespace": item.namespace,
        "name": item.pod,
        "apiVersion": "/v1",
    }
    common = {"describedObject": described, "timestamp": rfc3339(item.timestamp)}
    if version == "v1beta1":
        return {
            **common,
            "metricName": metric,
            "window": window,
            "value": quantity(item.value),
            "selector": None,
        }
    return {
        **common,
        "metric": {"name": metric, "selector": None},
        "windowSeconds": window,
        "value": quantity(item.value),
    }


def value_list(version: str, items: list[dict[str, Any]]) -> web.Response:
    return web.json_response(
        {
            "kind": "MetricValueList",
            "apiVersion": f"{GROUP}/{version}",
            "metadata": {},
            "items": items,
        }
    )


def _group_version(version: str) -> dict[str, str]:
    return {"groupVersion": f"{GROUP}/{version}", "version": version}


def _group() -> dict[str, Any]:
    return {
        "name": GROUP,
        "versions": [_group_version(v) for v in VERSIONS],
        "preferredVersion": _group_version(VERSIONS[0]),
    }


async def apis(request: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]})


async def api_group(request: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **_group()})


async def api_resources(request: web.Request) -> web.Response:
    version = request.match_info["version"]
    if version not in VERSIONS:
        return status(404, "NotFound", "the server could not find the requested resource")
    provider = request.app[PROVIDER_KEY]
    resources = [
        {
            "name": f"{resource}/{metric}",
            "singularName": "",
            "namespaced": namespaced,
            "kind": "MetricValueList",
            "verbs": ["get"],
        }
        for resource, metric, namespaced in provider.list_metrics()
    ]
    return web.json_response(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{GROUP}/{version}",
            "resources": resources,
        }
    )


async def namespaced_metric(request: web.Request) -> web.Response:
    """`namespaces/{ns}/{resource}/{name}/{metric}`; name `*` lists by `labelSelector`."""
    version = request.match_info["version"]
    if version not in VERSIONS:
        return status(404, "NotFound", "the server could not find the requested resource")
    namespace = request.match_info["namespace"]
    resource = request.match_info["resource"]
    name = request.match_info["name"]
    metric = request.match_info["metric"]
    provider = request.app[PROVIDER_KEY]
    window = request.app[WINDOW_KEY]
    try:
        if name == "*":
            try:
                selector = parse_selector(request.query.get("labelSelector", ""))
            except ValueError as error:
                return status(400, "BadRequest", f"unable to parse labelSelector: {error}")
            found = provider.by_selector(namespace, resource, selector, metric)
        else:
            found = [provider.by_name(namespace, resource, name, metric)]
    except MetricNotFound as error:
        return status(404, "NotFound", str(error))
    return value_list(version, [metric_value(version, item, metric, window) for item in found])


async def namespace_metric(request: web.Request) -> web.Response:
    """`namespaces/{ns}/metrics/{metric}`: a metric of the namespace itself. We serve none."""
    metric = request.match_info["metric"]
    return status(404, "NotFound", f"the server could not find the metric {metric} for namespaces")


async def root_scoped_metric(request: web.Request) -> web.Response:
    """`{resource}/{name}/{metric}` for cluster-scoped objects. We serve none."""
    metric, resource = request.match_info["metric"], request.match_info["resource"]
    return status(404, "NotFound", f"the server could not find the metric {metric} for {resource}")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY]():
        return web.Response(text="ok")
    return web.Response(status=503, text="pods not listed yet")


def create_metrics_app(
    provider: ConnectionsProvider,
    trust: ClientTrust,
    ready: Callable[[], bool],
    window_seconds: int,
    authorizer: Authorizer,
) -> web.Application:
    app = web.Application(middlewares=[authenticate])
    app[AUTHZ_KEY] = authorizer
    app[PROVIDER_KEY] = provider
    app[TRUST_KEY] = trust
    app[READY_KEY] = ready
    app[WINDOW_KEY] = window_seconds
    base = f"/apis/{GROUP}/{{version}}"
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/apis", apis)
    app.router.add_get(f"/apis/{GROUP}", api_group)
    app.router.add_get(base, api_resources)
    app.router.add_get(f"{base}/namespaces/{{namespace}}/metrics/{{metric}}", namespace_metric)
    app.router.add_get(
        f"{base}/namespaces/{{namespace}}/{{resource}}/{{name}}/{{metric}}", namespaced_metric
    )
    app.router.add_get(f"{base}/{{resource}}/{{name}}/{{metric}}", root_scoped_metric)
    return app
