"""What the connections a collection found are doing, read after the socket tables are
joined with the fd tables (`exporter/gunicorn/measure.py`'s `Measurer` mixes this in):
which client connections are idle keep-alive ones, and what the workers' outbound
connections wait for (exporter/gunicorn/dependencies.py). Exact lookups, bounded by
`sockdiag.MAX_LOOKUPS` per scrape, in each connection's network namespace.
"""

from __future__ import annotations

import logging

from exporter.gunicorn import dependencies, join
from exporter.linux import sockdiag

log = logging.getLogger("exporter.gunicorn.measure")

# worker classes that keep a connection open between requests (HTTP keep-alive) and
# have a finite capacity: there an idle keep-alive connection must not count as busy
# (None: the class is not known, so it may be one of them)
KEEPALIVE_CLASSES = {"gthread", "gevent", "eventlet", "tornado", None}


class ConnectionStates:
    """Needs of its host: `procfs`, `netns_sockets`, `_own_netns`, `_tcp_idle`,
    `_tcp_times` and `_worker_class_hint(raw)`."""

    def _find_idle(self, raws: list) -> None:
        """Which client connections are idle: a keep-alive connection whose last request
        is answered, or a new one whose request has not come, for the worker classes that
        keep connections open between requests.

        gthread says it itself: a connection its main loop waits on (registered in the
        worker's epoll, whose fdinfo lists the watched inodes) has no thread; one that is
        not, a thread runs or is queued for (gunicorn 20 to 27). That holds for unix
        sockets too. For the other classes, and a gthread worker whose epoll cannot be
        read, TCP connections are told apart by tcp_info instead (one batch of exact
        sock_diag lookups; see `diagmsg.parse_tcp_idle`)."""
        by_netns: dict[int | None, tuple[list, list]] = {}
        for raw in raws:
            if raw.socket_source != "netlink" or raw.joined is None:
                continue
            hint = self._worker_class_hint(raw)
            if hint not in KEEPALIVE_CLASSES:
                continue
            if hint == "gthread" and self._epoll_idle(raw):
                continue
            match = join.SocketMatcher.of(raw.joined.listeners, (), ())
            candidates, owners = by_netns.setdefault(raw.netns, ([], []))
            for w in raw.workers:
                if w.sockets is not None:
                    candidates.extend(join.client_tcp(w.sockets, match))
            owners.append(raw)
        budget = sockdiag.MAX_LOOKUPS   # per scrape, all namespaces together: a user's many
        for netns, (candidates, owners) in by_netns.items():   # namespaces cost no more
            candidates = candidates[:budget]
            budget -= len(candidates)
            if not candidates:
                if budget > 0:
                    for raw in owners:
                        raw.idle_measured = True
                continue
            idle = self._tcp_lookups(self._tcp_idle, netns, owners[0], candidates)
            if idle is None:
                continue
            idle_inodes = {ino for ino, is_idle in idle.items() if is_idle}
            for raw in owners:
                raw.idle_measured = True
                raw.idle = idle_inodes

    def _tcp_lookups(self, lookup, netns: int | None, raw,
                     candidates: list) -> dict | None:
        """tcp_info of `candidates` by exact lookups in their network namespace (a pod's
        through a socket opened inside it); None when that failed."""
        try:
            if netns is None or netns == self._own_netns:
                return lookup(candidates)
            sock, _ = self.netns_sockets.get(netns, raw.master.proc.pid)
            return lookup(candidates, sock=sock)
        except OSError as e:
            log.debug("tcp_info lookups failed in netns %s: %s", netns, e)
            if netns is not None and netns != self._own_netns:
                self.netns_sockets.discard(netns)
            return None

    def _find_waits(self, raws: list) -> None:
        """What the workers' outbound connections wait for (exporter/gunicorn/
        dependencies.py): tcp_info of the established TCP ones (exact lookups, at most
        MAX_LOOKUPS a scrape), and where a sync worker with outbound connections sleeps
        (/proc/PID/wchan)."""
        budget = sockdiag.MAX_LOOKUPS
        for raw in raws:
            if raw.socket_source != "netlink" or raw.joined is None:
                continue
            match = join.SocketMatcher.of(raw.joined.listeners, (), ())
            sync = self._worker_class_hint(raw) == "sync"
            candidates = []
            for w in raw.workers:
                if w.sockets is None:
                    continue
                conns = dependencies.outbound(w.sockets, raw.joined.unix_peers, match)
                candidates += [c.sock for c in conns if isinstance(c.sock, sockdiag.InetSocket)]
                if sync and conns:
                    try:
                        w.wchan = self.procfs.read_text(w.pid, "wchan", limit=64).strip()[:64]
                    except OSError:
                        pass
            candidates = candidates[:budget]
            budget -= len(candidates)
            if candidates:
                raw.dep_times = self._tcp_lookups(self._tcp_times, raw.netns, raw,
                                                  candidates) or {}

    def _epoll_idle(self, raw) -> bool:
        """A gthread master's idle connections from its workers' epolls; False (and
        nothing set) when one worker's cannot be read."""
        watched: set[int] = set()
        for w in raw.workers:
            if w.scan is None or not w.scan.epolls:
                return False
            for fd in w.scan.epolls:
                try:
                    watched |= self.procfs.epoll_targets(w.pid, fd)
                except OSError:
                    return False
        raw.idle = watched          # listeners too: join counts only client connections
        raw.idle_measured = True
        return True
