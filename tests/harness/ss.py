"""The `ss` oracle: iproute2's `ss` run and parsed here, sharing no code with the
exporter's socket readers, to say what a listener's queue holds and which connections a
process has."""

from __future__ import annotations

import os
import re
import subprocess
from collections import namedtuple
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from tests.harness.masters import Gunicorn

SsConn = namedtuple("SsConn", "netid state local peer")

_NETIDS = {"u_str", "u_seq", "u_dgr", "tcp", "udp", "raw", "nl", "p_raw", "p_dgr",
           "v_str", "v_dgr", "sctp", "mptcp", "tipc", "xdp"}
_USER_RE = re.compile(r"pid=(\d+),fd=(\d+)")


@dataclass
class SsSocket:
    netid: str
    state: str
    recv_q: int
    send_q: int
    local: str          # unix path ('*' if unnamed) or 'host:port'
    peer: str           # '*' for unix, 'host:port' for tcp
    local_inode: int | None = None
    peer_inode: int | None = None
    owners: list = field(default_factory=list)  # [(pid, fd), ...]

    def owned_by(self, pid: int) -> bool:
        return any(p == pid for p, _ in self.owners)


def _run_ss(args: Sequence[str]) -> list[str]:
    res = subprocess.run(["ss", *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError("ss %s failed: %s" % (" ".join(args), res.stderr))
    return [line for line in res.stdout.splitlines() if line.strip()]


def parse_ss_line(line: str, default_netid: str | None = None) -> SsSocket | None:
    """Parse one ``ss -H`` line (unix or tcp; with or without -p)."""
    users = ""
    idx = line.find("users:(")
    if idx >= 0:
        users = line[idx:]
        line = line[:idx]
    tok = line.split()
    if not tok:
        return None
    if tok[0] in _NETIDS:
        netid = tok.pop(0)
    else:
        netid = default_netid or "?"
    if len(tok) < 5:
        return None
    state, recv_q, send_q = tok[0], int(tok[1]), int(tok[2])
    owners = [(int(p), int(f)) for p, f in _USER_RE.findall(users)]
    if netid.startswith("u_"):
        # Local-path inode Peer-path inode; unix peer is '*' for stream conns
        if len(tok) < 7:
            return None
        return SsSocket(netid, state, recv_q, send_q, tok[3], tok[5],
                        int(tok[4]) if tok[4].isdigit() else None,
                        int(tok[6]) if tok[6].isdigit() else None, owners)
    return SsSocket(netid, state, recv_q, send_q, tok[3], tok[4], owners=owners)


def ss_sockets(args: Sequence[str] = ("-xtanpH",)) -> list[SsSocket]:
    default = None
    flags = "".join(a.lstrip("-") for a in args if a.startswith("-") and not a.startswith("--"))
    if "t" in flags and "x" not in flags:
        default = "tcp"
    elif "x" in flags and "t" not in flags:
        default = "u_str"
    out = []
    for line in _run_ss(args):
        s = parse_ss_line(line, default)
        if s is not None:
            out.append(s)
    return out


def _norm_listener(addr) -> tuple[str, str | None, int | None]:
    """-> ('unix', path, None) or ('tcp', host-or-None, port)."""
    if hasattr(addr, "listener"):
        addr = addr.listener
    if isinstance(addr, int):
        return "tcp", None, addr
    if isinstance(addr, tuple):
        return "tcp", addr[0], int(addr[1])
    text = os.fspath(addr)
    if text.startswith("unix:"):
        text = text[5:]
    if text.startswith("/"):
        return "unix", text, None
    text = text.replace("http://", "")
    host, _, port = text.rpartition(":")
    return "tcp", (host.strip("[]") or None), int(port)


def _split_hostport(hp: str) -> tuple[str, int | None]:
    host, _, port = hp.rpartition(":")
    host = host.strip("[]")
    # ss may print scope like 127.0.0.1%lo
    host = host.split("%", 1)[0]
    return host, (int(port) if port.isdigit() else None)


def _local_matches(sock: SsSocket, kind: str, host: str | None, port: int | None) -> bool:
    if kind == "unix":
        return sock.netid.startswith("u_") and sock.local == host
    if sock.netid != "tcp":
        return False
    h, p = _split_hostport(sock.local)
    if p != port:
        return False
    if host is None:
        return True
    return h == host or h in ("*", "0.0.0.0", "::")


def ss_listen_queue(addr) -> tuple[int, int] | None:
    """(recv_q, send_q) of a listening socket: for LISTEN sockets Recv-Q is
    the current accept-queue length and Send-Q the backlog. ``addr`` is a
    unix path ('unix:' prefix ok), 'host:port', '[::1]:port', a port, or a
    Gunicorn. None if no such listener."""
    kind, host, port = _norm_listener(addr)
    if kind == "unix":
        socks = ss_sockets(("-xlnH",))
    else:
        socks = ss_sockets(("-tlnH",))
    for s in socks:
        if s.state == "LISTEN" and _local_matches(s, kind, host, port):
            return s.recv_q, s.send_q
    return None


def ss_process_sockets(pid: int) -> list[SsSocket]:
    """All unix+tcp sockets (any state) that ``pid`` holds an fd for."""
    return [s for s in ss_sockets(("-xtanpH",)) if s.owned_by(pid)]


def ss_process_connections(pid: int) -> list[SsConn]:
    """[(netid, state, local, peer)] for sockets owned by ``pid`` (ss -xtanpH)."""
    return [SsConn(s.netid, s.state, s.local, s.peer) for s in ss_process_sockets(pid)]


def _count_state(pid: int, listener, states: set[str]) -> int:
    kind, host, port = _norm_listener(listener)
    return sum(1 for s in ss_process_sockets(pid)
               if s.state in states and _local_matches(s, kind, host, port))


def ss_worker_active_connections(pid: int, listener) -> int:
    """ESTAB connections held by ``pid`` whose local address is the listener
    (unix path, or TCP port [+host])."""
    return _count_state(pid, listener, {"ESTAB"})


def ss_worker_close_wait_connections(pid: int, listener) -> int:
    """TCP CLOSE-WAIT connections held by ``pid`` on the listener."""
    return _count_state(pid, listener, {"CLOSE-WAIT"})


ss_worker_close_wait = ss_worker_close_wait_connections


def ss_requests_held(g: "Gunicorn") -> int:
    """Connections an app has taken and not finished, by ss: its accept queue, and every
    connection its workers hold on its listener, open or already left by the client."""
    queue = ss_listen_queue(g.listener)
    return (queue[0] if queue else 0) + sum(
        _count_state(pid, g.listener, {"ESTAB", "CLOSE-WAIT"}) for pid in g.worker_pids())
