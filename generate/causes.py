"""The dashboard's "Why busy" row: what the busy workers wait on (their dependencies:
exporter/gunicorn/dependencies.py, docs/metrics.md#dependencies) and the code stuck
workers are in (--collector.stacks: docs/metrics.md#stacks-of-stuck-workers)."""

from __future__ import annotations

from generate.panels import S, Panel, table, timeseries

NO_DEPENDENCIES = "No outbound connection of a worker (or none read: see the exporter's privileges)"
NO_STUCK = "No stuck worker (or --collector.stacks is off)"


def why_busy(t: dict[str, float]) -> list[Panel]:
    """Peers by waiting workers, the longest wait, connections by state, stuck frames."""
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
                    decimals=0, no_value=NO_DEPENDENCIES), 12, 8),
        (table("Stuck workers: the code they are in",
               "gunicorn_worker_stuck_frame_info: the innermost frame outside gunicorn and the "
               "standard library of each worker stuck now (heartbeat past --stacks.timeout-share "
               "of --timeout, or waiting on one dependency past --stacks.min-wait), read by "
               "py-spy with --collector.stacks. The whole stack: GET /debug/stacks on the "
               "exporter; a worker then killed at its timeout leaves a stack_postmortem line in "
               "the exporter's log.",
               f"gunicorn_worker_stuck_frame_info{{{S}}} == 1", no_value=NO_STUCK), 12, 8),
    ]
