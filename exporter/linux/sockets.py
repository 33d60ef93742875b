"""The host's sockets as the exporter sees them, whoever read them: the netlink
sock_diag answers (exporter/linux/diagmsg.py, exporter/linux/sockdiag.py) or the
/proc/net files when netlink is unavailable (exporter/linux/procnet.py) make the same
`SocketTable` of `UnixSocket` and `InetSocket`. Unknown values are None; 0 means none.
"""

from __future__ import annotations

from dataclasses import dataclass

# TCP state numbers (include/net/tcp_states.h).  Unix sockets reuse them:
# 1 ESTABLISHED, 7 CLOSE, 10 LISTEN.
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
TCP_NEW_SYN_RECV = 12  # request sockets; reported with inode 0

TCP_STATE_NAMES = {
    TCP_ESTABLISHED: "ESTABLISHED", TCP_SYN_SENT: "SYN_SENT",
    TCP_SYN_RECV: "SYN_RECV", TCP_FIN_WAIT1: "FIN_WAIT1",
    TCP_FIN_WAIT2: "FIN_WAIT2", TCP_TIME_WAIT: "TIME_WAIT",
    TCP_CLOSE: "CLOSE", TCP_CLOSE_WAIT: "CLOSE_WAIT",
    TCP_LAST_ACK: "LAST_ACK", TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING",
    TCP_NEW_SYN_RECV: "NEW_SYN_RECV",
}

RCV_SHUTDOWN = 1   # sk_shutdown bits
SEND_SHUTDOWN = 2


@dataclass(slots=True)
class UnixSocket:
    inode: int
    state: int          # TCP_LISTEN / TCP_ESTABLISHED / TCP_CLOSE ...
    type: int           # socket.SOCK_STREAM etc.
    name: str | None    # bound path; abstract as '@name'; None when unnamed
    peer: int | None    # peer socket inode; 0 if none, None if unknown
    rqueue: int | None  # LISTEN: accept-queue length; else receive queue; None if unknown
    wqueue: int | None  # LISTEN: max backlog; else send queue; None if unknown
    shutdown: int | None  # sk_shutdown bits (RCV_SHUTDOWN, SEND_SHUTDOWN); None if unknown
    vfs_ino: int | None = 0  # inode of the socket file on disk; 0 if none, None if unknown
    vfs_dev: int | None = 0  # its device in the kernel's encoding (major << 20 | minor)

    @property
    def vfs(self) -> tuple[int, int, int] | None:
        """(major, minor, inode) of the bound file, comparable with os.stat(); None
        when there is none or it is unknown."""
        if not self.vfs_ino:
            return None
        return self.vfs_dev >> 20, self.vfs_dev & 0xFFFFF, self.vfs_ino


@dataclass(slots=True)
class InetSocket:
    inode: int
    family: int         # socket.AF_INET or AF_INET6
    state: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    rqueue: int | None  # LISTEN: accept-queue length; else bytes unread
    wqueue: int | None  # LISTEN: backlog limit; else bytes unsent; None if unknown
    uid: int
    drops: int | None = None  # LISTEN: connections dropped at it (sk_drops); None if unknown


@dataclass(slots=True)
class SocketTable:
    unix: dict[int, UnixSocket]
    inet: dict[int, InetSocket]
    source: str         # 'netlink' or 'procfs'
    # every TCP socket was read (False: only listeners, all wanted inodes being known)
    inet_complete: bool = True


@dataclass(frozen=True, slots=True)
class TcpTimes:
    """What a connection's tcp_info says of its last exchange."""
    sent_ms: int                 # milliseconds since it last sent data
    recv_ms: int                 # milliseconds since it last received data
    answered: bool | None        # any of its data acknowledged (None: Linux before 4.1)
    received: bool | None = None  # any data received (None: Linux before 4.1)

    @property
    def sent_last(self) -> bool:
        """It sent after it last received: on a worker's client connection its answer
        is out (idle keep-alive), on its outbound one it waits for a reply."""
        if self.answered is None:
            return self.recv_ms > self.sent_ms   # only a strict order tells
        return self.answered and self.recv_ms >= self.sent_ms

    @property
    def awaiting_reply(self) -> bool:
        """On an outbound connection: it sent after it last received, or it sent and has
        received nothing at all (a request sent in the tick the connection opened has
        last_data_sent equal to last_data_recv, which dates from the handshake)."""
        return self.sent_ms < self.recv_ms or (self.received is False and bool(self.answered))
