"""The one place where metric families are named, described and rendered (this package).

`render(snapshot)` turns a `Snapshot` (plain data from the collectors) into
prometheus_client metric families; nothing else in the package creates a metric.
docs/metrics.md documents every family below; tests/test_docs.py keeps the two in sync.

Sample output (one sync app, two workers, one busy):

    gunicorn_up{app="shop"} 1.0
    gunicorn_workers{app="shop"} 2.0
    gunicorn_workers_busy{app="shop"} 1.0
    gunicorn_worker_connections{app="shop",state="active",worker="0"} 1.0
    gunicorn_worker_heartbeat_age_seconds{app="shop",worker="0"} 12.4
    gunicorn_listener_queue_length{app="shop",listener="unix:/run/shop.sock"} 3.0
    gunicorn_listener_queue_max{app="shop",listener="unix:/run/shop.sock"} 2048.0

Layout: `render` and the exporter's own families here; the gunicorn collector's and the
sampler's in gunicorn.py; the other collectors' in others.py; helpers in family.py; the
families to exposition bytes (byte for byte prometheus_client's output) in encode.py.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, InfoMetricFamily, Metric

from exporter import __version__
from exporter.metrics.family import _g
from exporter.metrics.gunicorn import render_gunicorn, render_sampler
from exporter.metrics.others import (render_advice, render_host, render_logs, render_oom,
                                     render_postgres, render_requests, render_statsd)
from exporter.metrics.stacks import render_stacks

__all__ = ["RENDERERS", "render", "per_worker", "render_web", "render_gunicorn", "render_sampler",
           "render_host", "render_oom", "render_logs", "render_postgres", "render_statsd",
           "render_requests", "render_advice", "render_stacks"]
from exporter.snapshot import (AdviceSnapshot, GunicornSnapshot, HostSnapshot, LogsSnapshot,
                               OomSnapshot, PostgresSnapshot, RequestsSnapshot,
                               SamplerSnapshot, Snapshot, StacksSnapshot, StatsdSnapshot)

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"     # the label of per-worker families (left out without them)
# ... except a cause's: present only while a worker is stuck, one series each, it names
# the code it is stuck in, which no app-level series can (--collector.stacks)
KEPT_PER_WORKER = {"gunicorn_worker_stuck_frame_info"}

# snapshot type -> renderer
RENDERERS = {GunicornSnapshot: render_gunicorn, HostSnapshot: render_host,
             OomSnapshot: render_oom, LogsSnapshot: render_logs,
             PostgresSnapshot: render_postgres, SamplerSnapshot: render_sampler,
             StatsdSnapshot: render_statsd, AdviceSnapshot: render_advice,
             StacksSnapshot: render_stacks}


def render(snapshot: Snapshot, worker_series: bool = True) -> Iterator[Metric]:
    """All families for one scrape, data first, exporter self-metrics last. Without
    `worker_series` (--gunicorn.worker-series=none) no family with a `worker` label.

    A collector's families are rendered completely before any is yielded: if rendering
    fails (a bug, or a value that is not a number), that collector is reported as failed
    and the others still answer; /metrics never fails as a whole.
    """
    failed: set[str] = set()
    for result in snapshot.results.values():
        if not result.success or result.data is None:
            continue
        renderer = RENDERERS.get(type(result.data))
        if renderer is None:
            continue
        try:
            families = [_checked(f) for f in renderer(result.data)
                        if worker_series or not per_worker(f)]
        except Exception as e:  # noqa: BLE001
            log.warning("collector %s: rendering failed: %r", result.name, e)
            failed.add(result.name)
            continue
        yield from families
    yield from _requests_guarded(snapshot)
    yield from render_self(snapshot, failed)


def per_worker(family: Metric) -> bool:
    """A family of one series per worker slot: it has a `worker` label (the stuck frames
    excepted: KEPT_PER_WORKER)."""
    if family.name in KEPT_PER_WORKER:
        return False
    names = getattr(family, "_labelnames", None)   # prometheus_client's *MetricFamily
    if names is None:
        return any(WORKER_LABEL in s.labels for s in family.samples)
    return WORKER_LABEL in names


def _checked(family: Metric) -> Metric:
    """Every sample can be written: its value is a float, its label values encode as
    UTF-8 (or the sample goes, with a warning: it is a bug upstream)."""
    if not all(_writable(s) for s in family.samples):
        family.samples = [s for s in family.samples if _writable(s)]
        log.warning("%s: dropped a sample that cannot be written", family.name)
    return family


def _writable(sample) -> bool:
    try:
        if type(sample.value) is not float:
            float(sample.value)      # ints too: one above 1.8e308 does not convert
        for v in sample.labels.values():
            if type(v) is not str:
                return False
            if not v.isascii():      # (ASCII text always encodes)
                v.encode("utf-8")
        return True
    except (TypeError, ValueError, OverflowError, UnicodeError, AttributeError):
        return False


def _requests_guarded(snapshot: Snapshot) -> Iterator[Metric]:
    """The request families, from every collector that counts requests (statsd, access
    logs): one family each, a `source` label per collector."""
    parts = [part for r in snapshot.results.values() if r.success
             for part in (getattr(r.data, "requests", None), getattr(r.data, "proxy_requests", None))
             if isinstance(part, RequestsSnapshot)]
    if not parts:
        return
    try:
        families = [_checked(f) for f in render_requests(parts)]
    except Exception as e:  # noqa: BLE001
        log.warning("rendering the request families failed: %r", e)
        return
    yield from families


def render_web(reload_ok: bool, counts: tuple[int, dict[str, int]] = (0, {})) -> Iterator[Metric]:
    g = _g("gunicorn_exporter_web_config_last_reload_successful",
           "1 if the last reading of --web.config.file (at start, on SIGHUP or after a file it "
           "names changed) succeeded; 0 while the previous config stays in force.")
    g.add_metric([], 1 if reload_ok else 0)
    yield g
    connections, refused = counts
    c = _g("gunicorn_exporter_web_connections",
           "Connections to the exporter's web server now, TLS handshakes included.")
    c.add_metric([], connections)
    yield c
    r = CounterMetricFamily(
        "gunicorn_exporter_web_refused",
        "Connections the web server closed and requests it refused, by reason: evicted "
        "(pushed out to make room), over_limit (503: every connection being served), "
        "header_timeout, write_timeout, tls_handshake, client_certificate (no allowed SAN), "
        "oversized_request, rate_limited (429), unauthorized (401), auth_busy (429: too "
        "many password checks waiting), handshake_rate (a local user's TLS connections past "
        "its handshakes a second).", labels=["reason"])
    for reason, n in sorted(refused.items()):
        r.add_metric([reason], n)
    yield r


def render_self(snapshot: Snapshot, render_failed: set[str] = frozenset()) -> Iterator[Metric]:
    """The exporter's own families; a collector whose data could not be rendered
    (`render_failed`) counts as failed."""
    ok = _g("gunicorn_exporter_collector_success", "1 if the collector's last run succeeded within its time limit.", ["collector"])
    dur = _g("gunicorn_exporter_collector_duration_seconds", "How long the collector's last run took, in seconds.", ["collector"])
    for name, r in sorted(snapshot.results.items()):
        ok.add_metric([name], 1 if r.success and name not in render_failed else 0)
        dur.add_metric([name], r.duration)
    yield ok
    yield dur
    build = InfoMetricFamily("gunicorn_exporter_build", "Version of gunicorn-exporter and the Python running it.")
    build.add_metric([], {"version": __version__, "python_version": platform.python_version()})
    yield build
