"""Families of the stacks collector (exporter/collectors/stacks.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.metrics.family import _g
from exporter.snapshot import StacksSnapshot


def render_stacks(snap: StacksSnapshot) -> Iterator[Metric]:
    up = _g("gunicorn_stack_reader_available",
            "1 if the stack reader (py-spy) was found; 0: no stack is captured (logged once).")
    up.add_metric([], 1 if snap.reader_available else 0)
    yield up
    frame = _g("gunicorn_worker_stuck_frame_info",
               "1 while the worker is stuck (heartbeat age past --stacks.timeout-share of "
               "--timeout, or waiting on one dependency past --stacks.min-wait) and its stack "
               "was captured: frame is the innermost frame outside gunicorn and the standard "
               "library, `function (file:line)`.", ["app", "worker", "frame"])
    for app, slot, label in snap.stuck:
        frame.add_metric([app, str(slot), label], 1)
    yield frame
    captures = CounterMetricFamily(
        "gunicorn_stack_captures",
        "Stack captures of stuck workers since the exporter started, by outcome: ok, gone "
        "(the worker exited first or during), not_python (no interpreter found: garbage "
        "memory or not Python), denied (no CAP_SYS_PTRACE), timeout (killed after "
        "--stacks.capture-timeout), failed, no_reader (py-spy not found).",
        labels=["app", "outcome"])
    for (app, outcome), n in sorted(snap.captures.items()):
        captures.add_metric([app, outcome], n)
    yield captures
    cpu = CounterMetricFamily(
        "gunicorn_stack_capture_cpu_seconds",
        "CPU time the stack reader's runs used (their own user and system time), since the "
        "exporter started; held to --stacks.max-cpu of a core on average.")
    cpu.add_metric([], snap.cpu_seconds)
    yield cpu
