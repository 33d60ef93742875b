"""Which gunicorn app a pid, a listener address or a memory cgroup belongs to.

OOM records and log lines arrive after the process they name is gone, so the OOM and
logs collectors read a bounded memory of what the gunicorn collector saw recently. It
has one writer: the gunicorn collector, after each of its collections (`update`).

* pid -> (app, 'worker' | 'master'), forgotten `pid_ttl` seconds after it was last seen
  (pids are reused; a kill record arrives within milliseconds of the kill);
* listener address -> app, kept (LRU) so that an nginx `connect() failed` line still
  names the app after its master died (W4);
* app -> the memory cgroup its master runs in (for kills of workers that were born
  and killed between two scrapes, and for the cgroup OOM counters);
* the apps the gunicorn collector reports (running, and stopped ones it remembers):
  the per-app series of the other collectors exist for them, and go with them.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from exporter.snapshot import GunicornSnapshot

MAX_PIDS = 65536
MAX_LISTENERS = 1024
MAX_APPS = 256
PID_TTL = 900.0
WILDCARD_HOSTS = ("0.0.0.0", "[::]", "", "*")


class AppIndex:
    def __init__(self, max_pids: int = MAX_PIDS, pid_ttl: float = PID_TTL,
                 max_listeners: int = MAX_LISTENERS, max_apps: int = MAX_APPS):
        self.max_pids = max_pids
        self.pid_ttl = pid_ttl
        self.max_listeners = max_listeners
        self.max_apps = max_apps
        self._pids: OrderedDict[int, tuple[str, str, float]] = OrderedDict()
        self._listeners: OrderedDict[str, str] = OrderedDict()
        self._ports: OrderedDict[int, str] = OrderedDict()   # wildcard TCP listeners
        self.apps: OrderedDict[str, float] = OrderedDict()    # the apps reported now
        self.masters: dict[str, int] = {}                    # app -> current master pid

    def update(self, snap: GunicornSnapshot, now: float | None = None) -> None:
        """Learn a collection's processes (the gunicorn collector, once per collection)."""
        now = time.time() if now is None else now
        masters: dict[str, int] = {}
        reported = {a.app for a in snap.apps if not a.transient}   # not a USR2 NAME.2
        for app in [n for n in self.apps if n not in reported]:
            del self.apps[app]          # forgotten by the gunicorn collector
        for a in snap.apps:
            if not a.transient:
                self._remember_app(a.app, now)
            if not a.up:
                continue
            if a.master_pid:
                masters[a.app] = a.master_pid
                self._remember_pid(a.master_pid, a.app, "master", now)
            for w in a.workers:
                self._remember_pid(w.pid, a.app, "worker", now)
            for lst in a.listeners:
                self._remember_listener(lst.address, a.app)
        self.masters = masters
        self._expire(now)

    def _remember_app(self, app: str, now: float) -> None:
        self.apps[app] = now
        self.apps.move_to_end(app)
        while len(self.apps) > self.max_apps:
            self.apps.popitem(last=False)

    def _remember_pid(self, pid: int, app: str, role: str, now: float) -> None:
        self._pids[pid] = (app, role, now)
        self._pids.move_to_end(pid)
        while len(self._pids) > self.max_pids:
            self._pids.popitem(last=False)

    def _remember_listener(self, address: str, app: str) -> None:
        self._listeners[address] = app
        self._listeners.move_to_end(address)
        while len(self._listeners) > self.max_listeners:
            self._listeners.popitem(last=False)
        if not address.startswith("unix:"):
            host, _, port = address.rpartition(":")
            if host in WILDCARD_HOSTS and port.isdigit():
                self._ports[int(port)] = app
                self._ports.move_to_end(int(port))
                while len(self._ports) > self.max_listeners:
                    self._ports.popitem(last=False)

    def _expire(self, now: float) -> None:
        # entries are in order of last sighting: drop from the old end (bounded)
        for _ in range(len(self._pids)):
            pid, (app, role, seen) = next(iter(self._pids.items()))
            if now - seen <= self.pid_ttl:
                break
            del self._pids[pid]

    def pid(self, pid: int | None, now: float | None = None) -> tuple[str, str] | None:
        """(app, role) of a pid seen in the last pid_ttl seconds."""
        if pid is None:
            return None
        hit = self._pids.get(pid)
        if hit is None:
            return None
        now = time.time() if now is None else now
        if now - hit[2] > self.pid_ttl:
            return None
        return hit[0], hit[1]

    def listener(self, address: str | None) -> str | None:
        """App listening on an address as nginx writes it ('unix:/x.sock', '127.0.0.1:8000')."""
        if not address:
            return None
        app = self._listeners.get(address)
        if app is not None:
            return app
        if address.startswith("unix:"):
            return None
        _host, _, port = address.rpartition(":")
        return self._ports.get(int(port)) if port.isdigit() else None
