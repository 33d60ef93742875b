"""A hostile local client of the exporter's web port, for tests/test_web_abuse.py. Standard
library only (it runs as a throwaway user). Every mode keeps N connections to
127.0.0.1:PORT until killed, writing how many it has (re)opened to STATUS_FILE once a
second; a connection the server closes is opened again at once where the mode says so.

  slowloris N PORT [once]   a request line and one header, then nothing
  idle N PORT [once]        connect, send nothing
  slowread N PORT [once]    pipeline GET /metrics over and over, never read a byte
  tlsstall N PORT [once]    send a TLS ClientHello, then nothing
  guess N PORT TOTAL USER   N keep-alive connections sending TOTAL basic-auth requests
                            with wrong passwords for USER between them, then exit

`once`: do not reopen a connection the server closed.
"""

from __future__ import annotations

import base64
import errno
import os
import secrets
import selectors
import socket
import ssl
import sys
import time

HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
PIPELINED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 16
STATUS = os.environ.get("STATUS_FILE")


def client_hello() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def report(opened: int, extra: str = "") -> None:
    if STATUS:
        tmp = STATUS + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{opened} {extra}\n")
        os.replace(tmp, STATUS)


def hold(mode: str, n: int, port: int, reopen: bool) -> None:
    first = {"slowloris": HEAD, "idle": b"", "slowread": PIPELINED,
             "tlsstall": client_hello()}[mode]
    sel = selectors.DefaultSelector()
    opened = 0

    def open_one():
        nonlocal opened
        s = socket.socket()
        s.setblocking(False)
        if mode == "slowread":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return False
        sel.register(s, selectors.EVENT_WRITE, "connecting")
        opened += 1
        return True

    for _ in range(n):
        open_one()
    missing = 0
    last = 0.0
    while True:
        for key, _ev in sel.select(0.2):
            s = key.fileobj
            if key.data == "connecting":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sel.unregister(s)
                    s.close()
                    missing += 1
                    continue
                try:
                    if first:
                        s.send(first)
                except OSError:
                    pass
                if mode == "slowread":
                    sel.unregister(s)      # never read: only resend, below
                    slow.append(s)
                else:
                    sel.modify(s, selectors.EVENT_READ, "open")
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:               # closed by the server
                sel.unregister(s)
                s.close()
                missing += 1
        if mode == "slowread":
            for s in list(slow):
                try:
                    s.send(PIPELINED)
                except BlockingIOError:
                    pass
                except OSError:
                    slow.remove(s)
                    s.close()
                    missing += 1
        if reopen:
            while missing and open_one():
                missing -= 1
        now = time.monotonic()
        if now - last >= 1:
            last = now
            report(opened)


slow: list[socket.socket] = []


def guess(n: int, port: int, total: int, user: str) -> None:
    socks: list[socket.socket | None] = [None] * n
    sel = selectors.DefaultSelector()
    sent = answered = 0
    statuses: dict[str, int] = {}

    def send(i: int) -> None:
        nonlocal sent
        if socks[i] is None:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setblocking(False)
            socks[i] = s
            sel.register(s, selectors.EVENT_READ, [i, b""])
        token = base64.b64encode(f"{user}:{secrets.token_hex(8)}".encode()).decode()
        socks[i].sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}"
                         "\r\n\r\n".encode())
        sent += 1

    for i in range(min(n, total)):
        send(i)
    while answered < total:
        for key, _ev in sel.select(1.0):
            s = key.fileobj
            i, buf = key.data
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                data = b"" if e.errno != errno.EAGAIN else None
            if data is None:
                continue
            buf += data
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not data or sep:
                status = head.split(b" ", 2)[1].decode() if sep and b" " in head else "closed"
                statuses[status] = statuses.get(status, 0) + 1
                answered += 1
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if not data or b"connection: close" in head.lower() or len(rest) != length:
                    sel.unregister(s)
                    s.close()
                    socks[i] = None
                else:
                    key.data[1] = b""
                if sent < total:
                    send(i)
            else:
                key.data[1] = buf
        report(answered, " ".join(f"{k}={v}" for k, v in sorted(statuses.items())))
    report(answered, " ".join(f"{k}={v}" for k, v in sorted(statuses.items())))


def main(argv: list[str]) -> None:
    mode, n, port = argv[0], int(argv[1]), int(argv[2])
    if mode == "guess":
        guess(n, port, int(argv[3]), argv[4])
    else:
        hold(mode, n, port, reopen=argv[3:4] != ["once"])


if __name__ == "__main__":
    main(sys.argv[1:])
