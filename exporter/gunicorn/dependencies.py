"""What a worker waits on: its outbound connections (its dependencies), from the socket
tables the collector already reads. Pure functions, tested on literal sockets in
tests/test_dependencies.py; the I/O (tcp_info lookups, /proc/PID/wchan) is in measure.py.

A worker's outbound connection is a TCP (IPv4, IPv6) or unix stream socket of the
worker that is connected to something, and is neither a listener nor a client the
worker accepted from the master's listeners, nor one end of a pair inside the worker.
Its peer is `host:port`, `[v6]:port` or `unix:PATH` (the path the peer is bound to).

A connection *waits* when the worker sent on it and has had no reply since:

* TCP: tcp_info says the last data went out after the last data came in (or data went
  out and none ever came in), and nothing is left unread (the wait is how long ago it
  sent);
* a sync worker in a request whose only thread sleeps in a read or a poll
  (/proc/PID/wchan): on the TCP connection of the request's latest exchange with
  nothing to read (a reply may come in parts: Postgres answers a query's first messages
  at once and its rows when the query is done), else on its one outbound unix
  connection with nothing to read (unix has no tcp_info: how long is not known).

A sync worker waits on at most one peer at a time, so its waits count workers; gthread
and async workers run many requests, so theirs count connections.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from exporter.gunicorn.join import SocketMatcher, WorkerSockets, is_client
from exporter.labels import bounded
from exporter.linux.sockets import (TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_SYN_SENT,
                                    InetSocket, TcpTimes, UnixSocket)

STATES = {TCP_ESTABLISHED: "established", TCP_SYN_SENT: "syn_sent",
          TCP_CLOSE_WAIT: "close_wait"}
OTHER = "other"
MAX_PEER = 256          # bytes of a peer label, like a listener's
# where a thread sleeps (/proc/PID/wchan, without the compiler's .constprop.N suffixes)
# when it waits to read a socket, directly or through poll/select/epoll
READ_WAITS = frozenset({"unix_stream_data_wait", "unix_stream_read_generic", "sk_wait_data",
                        "wait_woken", "do_sys_poll", "do_poll", "poll_schedule_timeout",
                        "do_select", "core_sys_select", "schedule_hrtimeout_range",
                        "ep_poll", "do_epoll_wait"})


def reading(wchan: str | None) -> bool:
    """Whether a thread that sleeps at `wchan` waits to read (see READ_WAITS)."""
    return bool(wchan) and wchan.split(".", 1)[0] in READ_WAITS


@dataclass(frozen=True, slots=True)
class Outbound:
    peer: str
    state: str                      # 'established', 'syn_sent', 'close_wait'
    sock: InetSocket | UnixSocket


@dataclass(frozen=True, slots=True)
class Wait:
    peer: str
    seconds: float | None           # None: a unix connection, how long is not known


@dataclass
class Dependency:
    """One app's connections to one peer, now."""
    connections: dict[str, int] = field(default_factory=dict)   # state -> count
    waiting: int = 0                # workers (sync) or connections (others) waiting
    wait: float | None = None       # the longest wait, seconds


def peer_of(sock: InetSocket | UnixSocket, unix_peers: dict[int, str]) -> str:
    if isinstance(sock, UnixSocket):
        name = unix_peers.get(sock.peer) if sock.peer else None
        return bounded(f"unix:{name or '(unnamed)'}", MAX_PEER)
    addr = sock.remote_addr[7:] if sock.remote_addr.startswith("::ffff:") else sock.remote_addr
    if sock.family == socket.AF_INET6 and ":" in addr:
        return bounded(f"[{addr}]:{sock.remote_port}", MAX_PEER)
    return bounded(f"{addr}:{sock.remote_port}", MAX_PEER)


def outbound(ws: WorkerSockets, unix_peers: dict[int, str], match: SocketMatcher) -> list[Outbound]:
    """The worker's outbound connections (see the module docstring)."""
    own = {s.inode for s in ws.unix}
    out = []
    for u in ws.unix:
        if (u.type == socket.SOCK_STREAM and u.state == TCP_ESTABLISHED and u.peer
                and u.peer not in own and not (u.name and u.name in match.unix_names)):
            out.append(Outbound(peer_of(u, unix_peers), "established", u))
    for i in ws.inet:
        state = STATES.get(i.state)
        if state is not None and not is_client(i, match):
            out.append(Outbound(peer_of(i, unix_peers), state, i))
    return out


def waits(conns: list[Outbound], times: dict[int, TcpTimes], wchan: str | None,
          request_age: float | None = None) -> list[Wait]:
    """The connections of one worker that wait for a reply (see the module docstring).
    `request_age`: a sync worker's current request has run this long (None: not a sync
    worker, or not in a request)."""
    out = []
    for c in conns:
        t = times.get(c.sock.inode) if isinstance(c.sock, InetSocket) else None
        if t is not None and c.state == "established" and c.sock.rqueue == 0 \
                and t.awaiting_reply:
            out.append(Wait(c.peer, t.sent_ms / 1000.0))
    if out or request_age is None or not reading(wchan):
        return out
    # A sync worker asleep in a read or a poll during a request waits on the connection
    # of that request's last exchange, if it has nothing to read: a protocol that answers
    # in parts (Postgres' extended query protocol: ParseComplete at once, the rows after
    # the query ran) has received last, and yet waits.
    recent = [(t.sent_ms, c) for c in conns
              if isinstance(c.sock, InetSocket) and c.state == "established"
              and c.sock.rqueue == 0 and (t := times.get(c.sock.inode)) is not None
              and max(t.sent_ms, t.recv_ms) / 1000.0 <= request_age]
    if recent:
        sent_ms, c = min(recent, key=lambda x: x[0])
        return [Wait(c.peer, sent_ms / 1000.0)]
    quiet = [c for c in conns if isinstance(c.sock, UnixSocket) and c.sock.rqueue == 0]
    return [Wait(quiet[0].peer, None)] if len(quiet) == 1 else []


def longest(ws: list[Wait]) -> Wait | None:
    """The wait a stuck worker is most likely stuck in: the longest known one."""
    known = [w for w in ws if w.seconds is not None]
    return max(known, key=lambda w: w.seconds) if known else (ws[0] if ws else None)


def by_peer(workers: list[tuple[list[Outbound], list[Wait]]], sync: bool,
            max_peers: int) -> dict[str, Dependency]:
    """An app's dependencies: per peer, connections by state, waiting workers (sync) or
    connections (others) and the longest wait. At most `max_peers` peers, those with
    the most connections; the rest are folded into `other`."""
    totals: dict[str, int] = {}
    for conns, _w in workers:
        for c in conns:
            totals[c.peer] = totals.get(c.peer, 0) + 1
    kept = set(sorted(totals, key=lambda p: (-totals[p], p))[:max_peers])
    out: dict[str, Dependency] = {}
    for conns, waiting in workers:
        for c in conns:
            d = out.setdefault(c.peer if c.peer in kept else OTHER, Dependency())
            d.connections[c.state] = d.connections.get(c.state, 0) + 1
        peers = {}
        for w in waiting:
            peers.setdefault(w.peer if w.peer in kept else OTHER, []).append(w)
        for peer, ws in peers.items():
            d = out[peer]
            d.waiting += 1 if sync else len(ws)
            known = [w.seconds for w in ws if w.seconds is not None]
            if known:
                d.wait = max(known + ([d.wait] if d.wait is not None else []))
    return out
