"""What every renderer uses: gauges with their labels, optional values."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily


def _g(name: str, doc: str, labels: Iterable[str] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)


def _maybe(family: GaugeMetricFamily, labels: list[str], value) -> None:
    if value is not None:
        family.add_metric(labels, value)
