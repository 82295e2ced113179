"""Read one gauge from many Prometheus endpoints at once, each with a timeout.

A node that does not answer in time, answers an error, or lacks the gauge counts as
missing (None); the error says why, and the caller shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    value: float | None
    error: str | None = None


def gauge_value(text: str, metric: str) -> float | None:
    """The sum of the gauge's samples (one per node for `iofleet_connections`)."""
    for family in text_string_to_metric_families(text):
        if family.name == metric:
            return sum(sample.value for sample in family.samples if sample.name == metric)
    return None


async def scrape_one(
    session: aiohttp.ClientSession, url: str, metric: str, timeout: float
) -> Scrape:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                return Scrape(None, f"HTTP {response.status}")
            text = await response.text()
    except TimeoutError:
        return Scrape(None, f"no answer within {timeout:g}s")
    except aiohttp.ClientError as error:
        return Scrape(None, f"{type(error).__name__}: {error}")
    try:
        value = gauge_value(text, metric)
    except ValueError as error:
        return Scrape(None, f"bad exposition: {error}")
    return Scrape(value, None if value is not None else f"no {metric} in /metrics")


async def scrape_all(
    session: aiohttp.ClientSession, urls: Mapping[str, str], metric: str, timeout: float
) -> dict[str, Scrape]:
    """Scrape every url concurrently; the whole round takes at most `timeout`."""
    names = list(urls)
    results = await asyncio.gather(
        *(scrape_one(session, urls[name], metric, timeout) for name in names)
    )
    return dict(zip(names, results, strict=True))
