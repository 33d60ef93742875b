"""The receive path's state: one accumulator per sender (source address), folded into
apps once the kernel has told which app holds the sending socket.

`feed(data, addr)` is all the work a datagram costs: one dict lookup of its source
address, the parse of at most MAX_LINES lines (MAX_DATAGRAM_VALUES values), and additions
to that sender's `Stats` (one per metric prefix). No attribution happens per packet.
`collect()` of the statsd collector first calls `plan()`, which sets aside what every
sender sent so far, then asks the resolver (exporter/statsd/attribution.py, in a thread)
about the senders, and `apply()` folds what was set aside into apps (`RequestTable`):

* kernel, verified: the sender's socket is the one proven at the previous collection,
  held by the same gunicorn process: no one else could send from that address in
  between, so the data is that process's app's (every prefix; a prefix cannot move data
  into another app);
* kernel, first proven (or proven to another socket than before): the data set aside
  was received *before* the socket table read that proved it, when the address may have
  been someone else's (a local user can send from a port a gunicorn binds later, or from
  one a stopped gunicorn freed): counted as unattributed (`unknown_sender`), never
  credited. So a new app's statsd data counts from its first collection on;
* pending: not known yet (new, or its gunicorn was not in the last collection): held,
  and counted as unattributed once it is proven or given up;
* unknown: another network namespace or host, a socket that is gone, or held by no
  gunicorn after two collections: a `--statsd.prefix` mapping of the line's prefix
  decides, else the lines are counted as unattributed (reason `unknown_sender`).

Bounded: at most MAX_SENDERS senders. When the table is full, a new sender replaces the
oldest sender that has sent a single datagram and is not proven (one-shot senders from
churned ephemeral ports cannot crowd out an app that sends again and again); when there
is none, it goes to one shared "overflow" accumulator (prefix mapping or reason
`limit`). MAX_PREFIXES prefixes per sender, MAX_NAMES cached metric names.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from exporter.statsd.parse import (COUNTER, DURATION, DURATION_TYPES, IGNORED,
                                   STATUS, classify, parse_line, prefix_name)
from exporter.statsd.stats import RequestTable, Stats

MAX_SENDERS = 4096
MAX_LINES = 32               # per datagram (gunicorn sends one); the rest are malformed
MAX_DATAGRAM_VALUES = 256    # packed values per datagram, all lines together
MAX_PREFIXES = 16
MAX_NAMES = 4096
RETRY_UNKNOWN = 60.0     # seconds before an unknown sender is looked up again
FORGET_IDLE = 600.0      # an unknown sender silent this long is forgotten

PENDING, KERNEL, UNKNOWN, OVERFLOW = "pending", "kernel", "unknown", "overflow"
OVERFLOW_ADDR = ("overflow", 0)


@dataclass(frozen=True, slots=True)
class Route:
    """A sender proven by the kernel: its socket, the process found holding it (pid and
    start time, clock ticks since boot) and that process's app and worker slot."""
    inode: int
    pid: int
    start: int
    app: str
    slot: int | None = None

    def same_socket(self, other: "Route") -> bool:
        """The same socket held by the same process (the app and slot may be renamed)."""
        return (self.inode, self.pid, self.start) == (other.inode, other.pid, other.start)


class Sender:
    __slots__ = ("addr", "state", "route", "by_prefix", "planned", "packets", "seen",
                 "first_map", "retry_at", "last_seen", "gone")

    def __init__(self, addr, state: str, first_map: int):
        self.addr = addr
        self.state = state
        self.route: Route | None = None
        self.by_prefix: dict[bytes, Stats] = {}     # received since the last plan()
        self.planned: dict[bytes, Stats] = {}       # set aside by plan(), folded by apply()
        self.packets = 0
        self.seen = True                 # a packet arrived since the last collection
        self.first_map = first_map       # process map generation when it first sent
        self.retry_at = 0.0
        self.last_seen = 0.0             # time of the last collection it had sent before
        self.gone = False                # its socket was not found at the last lookup


class SenderTable:
    def __init__(self, prefixes: dict[str, str] | None = None, *, max_senders: int = MAX_SENDERS):
        self.prefixes = dict(prefixes or {})
        self.max_senders = max_senders
        self.senders: dict[object, Sender] = {}
        self.overflow = Sender(OVERFLOW_ADDR, OVERFLOW, 0)
        self.apps = RequestTable("statsd")
        self.map_generation = 0          # process maps seen so far (set by the collector)
        self._names: dict[bytes, tuple[int, bytes, str]] = {}
        # counters
        self.packets = 0
        self.malformed = 0
        self.ignored = 0
        self.unattributed: dict[str, float] = {"unknown_sender": 0, "limit": 0}
        self._one_shot: deque = deque()   # addresses of senders seen once, oldest first

    # --- the receive path (on the event loop) ----------------------------------

    def feed(self, data: bytes, addr) -> None:
        self.packets += 1
        s = self.senders.get(addr)
        if s is None:
            s = self._new(addr)
        s.packets += 1
        s.seen = True
        names = self._names
        by_prefix = s.by_prefix
        lines = data.split(b"\n", MAX_LINES)
        if len(lines) > MAX_LINES:          # the rest, unparsed: bounded work per datagram
            self.malformed += 1 + lines.pop().count(b"\n")
        budget = MAX_DATAGRAM_VALUES
        for raw in lines:
            if not raw:
                continue
            p = parse_line(raw)
            if p is None:
                self.malformed += 1
                continue
            name, values, mtype, rate = p
            budget -= len(values)
            if budget < 0:
                self.malformed += 1
                continue
            c = names.get(name)
            if c is None:
                c = classify(name)
                if len(names) >= MAX_NAMES:
                    names.clear()
                names[name] = c
            kind, prefix, key = c
            if kind == IGNORED:
                self.ignored += 1
                continue
            st = by_prefix.get(prefix)
            if st is None:
                if len(by_prefix) >= MAX_PREFIXES:
                    self.unattributed["limit"] += 1
                    continue
                st = by_prefix[prefix] = Stats()
            weight = 1.0 / rate
            if kind == DURATION:
                if mtype not in DURATION_TYPES or min(values) < 0:
                    self.malformed += 1
                    continue
                for v in values:
                    st.observe(v / 1000.0, weight)       # gunicorn sends milliseconds
            else:
                if mtype != COUNTER or min(values) < 0:
                    self.malformed += 1
                    continue
                n = sum(values) * weight
                if kind == STATUS:
                    st.statuses[key] = st.statuses.get(key, 0.0) + n
                else:  # LOG
                    st.levels[key] = st.levels.get(key, 0.0) + n
            st.lines += 1

    def _new(self, addr) -> Sender:
        if len(self.senders) >= self.max_senders and not self._evict_one_shot():
            return self.overflow
        s = self.senders[addr] = Sender(addr, PENDING, self.map_generation)
        self._one_shot.append(addr)
        if len(self._one_shot) > 2 * self.max_senders:   # stale entries: rebuild
            self._one_shot = deque(a for a, x in self.senders.items()
                                   if x.packets <= 1 and x.state != KERNEL)
        return s

    def _evict_one_shot(self) -> bool:
        """Make room: forget the oldest sender that sent one datagram and is not proven
        (its data counted as unattributed). False when there is none."""
        while self._one_shot:
            addr = self._one_shot.popleft()
            s = self.senders.get(addr)
            if s is not None and s.packets <= 1 and s.state != KERNEL:
                self._unattributed(s, "limit")
                del self.senders[addr]
                return True
        return False

    # --- a collection (on the event loop, around the resolver's thread) ----------

    def plan(self, now: float) -> tuple[list[tuple[object, Route]], list[object]]:
        """(senders to verify with their routes, senders to look up)."""
        verify, lookup = [], []
        for s in (*self.senders.values(), self.overflow):   # set aside what came so far
            if s.by_prefix:
                for prefix, st in s.by_prefix.items():
                    have = s.planned.get(prefix)
                    if have is None:
                        s.planned[prefix] = st
                    else:
                        have.merge(st)
                s.by_prefix = {}
        for addr, s in self.senders.items():
            if s.state == KERNEL and s.route is not None:
                verify.append((addr, s.route))
            elif s.state == PENDING or (s.state == UNKNOWN and now >= s.retry_at):
                lookup.append(addr)
        return verify, lookup

    def apply(self, results: dict[object, tuple[str, Route | None]] | None, now: float,
              map_generation: int) -> None:
        """Record the resolver's answers (addr -> (outcome, route)) and fold every
        sender's data. outcome: 'kernel' (route), 'not_found' (a local socket no known
        gunicorn holds), 'gone' (no such socket: another namespace or host, or closed).
        results None: the socket table could not be read; proven senders keep their
        route, the others wait."""
        for addr, (outcome, route) in (results or {}).items():
            s = self.senders.get(addr)
            if s is None:
                continue
            s.gone = outcome == "gone"
            if outcome == "kernel":
                verified = s.state == KERNEL and s.route is not None and \
                    s.route.same_socket(route)
                if not verified:
                    # received before the table read that proved it: whose, unknown
                    self._unattributed(s, "unknown_sender")
                s.state, s.route = KERNEL, route
            elif outcome == "gone":
                # the proven socket closed since: what came meanwhile may be anyone's
                self._unattributed(s, "unknown_sender")
                s.state, s.route, s.retry_at = UNKNOWN, None, now + RETRY_UNKNOWN
            elif outcome == "not_found":
                if s.state == KERNEL:    # the address now belongs to another socket
                    self._unattributed(s, "unknown_sender")
                    s.first_map = map_generation
                if map_generation >= s.first_map + 2:
                    # no gunicorn of the last two collections holds it: its gunicorn is
                    # not watched, or it is no gunicorn at all
                    s.state, s.retry_at = UNKNOWN, now + RETRY_UNKNOWN
                else:
                    s.state = PENDING
                s.route = None
        for addr, s in list(self.senders.items()):
            self._fold(s)
            if s.seen:
                s.seen, s.last_seen = False, now
            elif s.state == UNKNOWN and (s.gone or now - s.last_seen > FORGET_IDLE):
                del self.senders[addr]   # nothing held: its data is folded
        self._fold(self.overflow)

    def adopt(self, adopted: dict[object, Route]) -> None:
        """Senders proven without having sent (gunicorn masters' sockets connected to the
        receiver, exporter/statsd/attribution.py): kernel from now on, outside the
        MAX_SENDERS limit; what an address sent before it was proven is discarded."""
        for addr, route in adopted.items():
            s = self.senders.get(addr)
            if s is None:
                s = self.senders[addr] = Sender(addr, KERNEL, self.map_generation)
            elif s.state == KERNEL and s.route is not None and s.route.same_socket(route):
                s.route = route
                continue
            else:
                self._unattributed(s, "unknown_sender")
            s.state, s.route = KERNEL, route

    def _fold(self, s: Sender) -> None:
        """Fold what plan() set aside: into the proven app, or by prefix mapping, or as
        unattributed; a pending sender's waits (it is discarded when proven)."""
        if not s.planned or s.state == PENDING:
            return
        if s.state == KERNEL and s.route is not None:
            for st in s.planned.values():
                self.apps.add(s.route.app, st)
            s.planned = {}
        else:
            self._unattributed(s, "limit" if s.state == OVERFLOW else "unknown_sender",
                               live=False)

    def _unattributed(self, s: Sender, reason: str, live: bool = True) -> None:
        """Count a sender's set-aside (and, with `live`, not yet set aside) lines as
        unattributed, unless a --statsd.prefix mapping names their app."""
        parts = [s.planned] + ([s.by_prefix] if live else [])
        for part in parts:
            for prefix, st in part.items():
                app = self.prefixes.get(prefix_name(prefix)) if prefix else None
                if app is None or not self.apps.add(app, st):
                    self.unattributed[reason] += st.lines
        s.planned = {}
        if live:
            s.by_prefix = {}

    def counts(self) -> dict[str, int]:
        out = {PENDING: 0, KERNEL: 0, UNKNOWN: 0}
        for s in self.senders.values():
            out[s.state] = out.get(s.state, 0) + 1
        return out

    def keep_apps(self, apps) -> None:
        """Forget the data of apps the gunicorn collector no longer reports (and that
        no prefix mapping names)."""
        self.apps.keep_only(set(apps) | set(self.prefixes.values()))
