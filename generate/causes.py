"""The dashboard's "Why busy" row: what the busy workers wait on (their dependencies:
exporter/gunicorn/dependencies.py, docs/metrics.md#dependencies)."""

from __future__ import annotations

from generate.panels import S, Panel, timeseries

NO_DEPENDENCIES = "No outbound connection of a worker (or none read: see the exporter's privileges)"


def why_busy(t: dict[str, float]) -> list[Panel]:
    """Peers by waiting workers, the longest wait, connections by state."""
    return [
        (timeseries("Workers waiting on a dependency",
                    "gunicorn_dependency_waiting_workers: workers (sync) or connections (gthread, "
                    "async) that sent to a peer and have had no reply since. Most of the busy "
                    "workers waiting on one peer is GunicornDependencySlow: that peer is the cause "
                    "(W6).",
                    [(f"gunicorn_dependency_waiting_workers{{{S}}} > 0", "{{app}} -> {{peer}}")],
                    decimals=0, no_value=NO_DEPENDENCIES), 12, 8),
        (timeseries("Longest dependency wait",
                    "gunicorn_dependency_wait_seconds: how long the longest waiting request to each "
                    "peer has waited for its reply (TCP peers; unknown for unix peers). Near "
                    "--timeout: the worker is killed next (W5).",
                    [(f"gunicorn_dependency_wait_seconds{{{S}}}", "{{app}} -> {{peer}}"),
                     (f"max by (instance, app) (gunicorn_timeout_seconds{{{S}}} > 0)",
                      "{{app}} timeout (limit)")],
                    unit="s", no_value=NO_DEPENDENCIES), 12, 8),
        (timeseries("Dependency connections by state",
                    "gunicorn_dependency_connections: the workers' connections to each peer by "
                    "state. syn_sent that stays: the peer does not accept, or no local port is "
                    "free (GunicornDependencyUnreachable); close_wait: the peer hung up first.",
                    [(f"sum by (instance, app, peer, state) (gunicorn_dependency_connections{{{S}}})",
                      "{{app}} -> {{peer}} {{state}}")],
                    decimals=0, no_value=NO_DEPENDENCIES), 24, 8),
    ]
