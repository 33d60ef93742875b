"""Where the web server listens: every `--web.listen-address` (repeatable; `:PORT` is
every IPv4 and IPv6 address), or the sockets systemd passes (`--web.systemd-socket`:
`LISTEN_FDS` and `LISTEN_PID`, sd_listen_fds(3)), as node_exporter does."""

from __future__ import annotations

import errno
import os
import socket

from exporter.parsing import parse_listen_address

BACKLOG = 4096          # the kernel caps it at net.core.somaxconn
SD_LISTEN_FDS_START = 3


class ListenError(OSError):
    pass


def bind_all(addresses) -> list[socket.socket]:
    """Listening TCP sockets for HOST:PORT strings (already checked by the config)."""
    socks: list[socket.socket] = []
    try:
        for address in addresses:
            socks.extend(_bind(address))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _bind(address: str) -> list[socket.socket]:
    host, port = parse_listen_address(address)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {address}: {e.strerror}") from None
    out: list[socket.socket] = []
    seen = set()
    for family, kind, proto, _name, addr in infos:
        if (family, addr) in seen:
            continue
        seen.add((family, addr))
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(BACKLOG)
        except OSError as e:
            s.close()
            # `:PORT` on a host without IPv6: the IPv4 socket is enough
            if host is None and family == socket.AF_INET6 and \
                    e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue
            for o in out:
                o.close()
            raise ListenError(f"cannot listen on {address}: {e.strerror or e}") from None
        out.append(s)
    if not out:
        raise ListenError(f"cannot listen on {address}: no usable address")
    return out


def systemd_sockets(environ=None) -> list[socket.socket]:
    """The listening stream sockets systemd passed to this process (and no other:
    LISTEN_PID must be ours); the variables are removed so children do not see them."""
    env = os.environ if environ is None else environ
    pid, fds = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not pid or not fds:
        raise ListenError("--web.systemd-socket: no sockets were passed (LISTEN_FDS is not "
                          "set; start the exporter from its .socket unit, "
                          "deploy/systemd/gunicorn-exporter.socket)")
    if not pid.isdigit() or int(pid) != os.getpid():
        raise ListenError(f"--web.systemd-socket: the sockets are for process {pid[:20]}, "
                          f"not this one ({os.getpid()})")
    if not fds.isdigit() or not 0 < int(fds) <= 64:
        raise ListenError(f"--web.systemd-socket: LISTEN_FDS={fds[:20]!r} is not 1..64")
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(fds)):
        try:
            s = socket.socket(fileno=fd)
        except OSError as e:
            raise ListenError(f"--web.systemd-socket: fd {fd}: {e.strerror or e}") from None
        if s.type != socket.SOCK_STREAM or \
                not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenError(f"--web.systemd-socket: fd {fd} is not a listening stream "
                              "socket (ListenStream= in the .socket unit)")
        os.set_inheritable(fd, False)
        out.append(s)
    return out


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return f"unix:{name}"
