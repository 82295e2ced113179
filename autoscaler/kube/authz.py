"""Delegated authorization, as an aggregated API server does it: ask the kube-apiserver
(SubjectAccessReview) whether the user the aggregator names may make this request.
Answers are cached briefly (the apiserver's own webhook defaults: 10 s either way)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lightkube import AsyncClient
from lightkube.models.authorization_v1 import (
    NonResourceAttributes,
    ResourceAttributes,
    SubjectAccessReviewSpec,
)
from lightkube.resources.authorization_v1 import SubjectAccessReview

CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class Caller:
    """Who the aggregator says is asking (request-header authentication)."""

    user: str
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Access:
    """What is asked: a resource (group, version, namespace, resource, name, subresource)
    or, for discovery documents, a non-resource path. The verb is always `get`."""

    path: str
    group: str | None = None
    version: str | None = None
    namespace: str | None = None
    resource: str | None = None
    name: str | None = None
    subresource: str | None = None

    def describe(self) -> str:
        if self.resource is None:
            return f'get path "{self.path}"'
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f' in the namespace "{self.namespace}"' if self.namespace else ""
        return f'get resource "{what}" in API group "{self.group}"{where}'


class Authorizer(Protocol):
    async def allowed(self, caller: Caller, access: Access) -> bool: ...


class SubjectAccessReviewer:
    def __init__(
        self,
        client: AsyncClient,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[tuple[Caller, Access], tuple[float, bool]] = {}
        self.reviews = 0

    async def allowed(self, caller: Caller, access: Access) -> bool:
        now = self._clock()
        key = (caller, access)
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        spec = SubjectAccessReviewSpec(
            user=caller.user,
            groups=list(caller.groups),
            extra={name: list(values) for name, values in caller.extra} or None,
        )
        if access.resource is None:
            spec.nonResourceAttributes = NonResourceAttributes(path=access.path, verb="get")
        else:
            spec.resourceAttributes = ResourceAttributes(
                group=access.group,
                version=access.version,
                namespace=access.namespace,
                resource=access.resource,
                name=access.name,
                subresource=access.subresource,
                verb="get",
            )
        review = await self._client.create(SubjectAccessReview(spec=spec))
        self.reviews += 1
        allowed = bool(review.status and review.status.allowed)
        if len(self._cache) > 10_000:  # many distinct callers: start again, stay bounded
            self._cache.clear()
        self._cache[key] = (now, allowed)
        return allowed


class AllowAll:
    """For tests of the HTTP layer alone (authentication still applies)."""

    async def allowed(self, caller: Caller, access: Access) -> bool:
        return True
