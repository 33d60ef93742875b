"""Watching a real Prometheus' alerts from the outside, as a pager would: each alert's
states over time, polled from /api/v1/alerts.

Used by the fault suites (tests/test_alerts_faults.py, tests/cadence.py). The oracle
is Prometheus' own API; nothing here reads the exporter.
"""

from __future__ import annotations

import threading
import time

from tests.harness.servers import get_json

Key = tuple[str, str]       # (alertname, app or "")


class Watcher(threading.Thread):
    """Polls /api/v1/alerts every `interval` seconds and keeps, per (alertname, app),
    the first time it was seen firing, its labels, the annotations it first fired with
    (what the first notification says), and every change of its state (`pending`,
    `firing`, or `inactive` when it is no longer listed)."""

    def __init__(self, prom: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.prom = prom
        self.interval = interval
        self.first: dict[Key, float] = {}          # first seen firing (monotonic)
        self.labels: dict[Key, dict] = {}
        self.annotations: dict[Key, dict] = {}      # as first seen firing
        self.changes: dict[Key, list[tuple[float, str]]] = {}
        self.polls = 0
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                alerts = get_json(self.prom + "/api/v1/alerts", timeout=2)["data"]["alerts"]
            except (OSError, ValueError, KeyError):
                continue            # an unanswered poll says nothing: no state change
            now = time.monotonic()
            states: dict[Key, str] = {}
            for a in alerts:
                key = (a["labels"]["alertname"], a["labels"].get("app", ""))
                if a.get("state") == "firing" or states.get(key) != "firing":
                    states[key] = a.get("state", "")
                self.labels.setdefault(key, a["labels"])
                if a.get("state") == "firing":
                    self.first.setdefault(key, now)
                    self.annotations.setdefault(key, a.get("annotations", {}))
            with self._lock:
                self.polls += 1
                for key in set(states) | set(self.changes):
                    state = states.get(key, "inactive")
                    history = self.changes.setdefault(key, [])
                    if not history or history[-1][1] != state:
                        history.append((now, state))

    def fired(self, app: str, since: float = 0.0) -> dict[str, float]:
        """{alertname: first firing time} of the app's alerts first firing after `since`."""
        return {n: t for (n, a), t in self.first.items() if a == app and t >= since}

    def episodes(self, alert: str, app: str) -> list[tuple[float, float | None]]:
        """The firing episodes of one alert of one app: [(start, end or None)]."""
        with self._lock:
            history = list(self.changes.get((alert, app), []))
        out: list[tuple[float, float | None]] = []
        for t, state in history:
            if state == "firing" and (not out or out[-1][1] is not None):
                out.append((t, None))
            elif state != "firing" and out and out[-1][1] is None:
                out[-1] = (out[-1][0], t)
        return out

    def seen(self, app: str, state: str) -> set[str]:
        """Alerts of the app that have been in `state` at some poll."""
        with self._lock:
            return {n for (n, a), h in self.changes.items() if a == app
                    and any(s == state for _, s in h)}
