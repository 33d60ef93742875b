#!/usr/bin/env python3
"""A process that looks like a gunicorn master to anyone reading /proc, run by the
hostile-host tests as an unprivileged user (started as `.../gunicorn ARGS`, catching
SIGHUP and SIGUSR2 like gunicorn's arbiter). It serves no HTTP.

FAKE_MODE:
  plain     only that;
  ctl       also binds a control socket ($FAKE_CTL, default $HOME/.gunicorn/gunicorn.ctl)
            and answers every request with $FAKE_ANSWER: nested (JSON nested 100,000
            deep), infinity (numbers gunicorn never sends: Infinity, 1e999, 400 digits),
            bigname (a 900 kB proc_name), garbage (not JSON), or hang (never answers);
  maps      also maps one file with a 4,000-character path 200 times, so /proc/PID/maps
            is 800 kB of long paths.
Stops on SIGTERM/SIGKILL.
"""

import json
import mmap
import os
import signal
import socket
import struct
import threading

MODE = os.environ.get("FAKE_MODE", "plain")
KEEP: list = []
DIR = os.environ.get("FAKE_DIR", "/tmp")


def answer_for(kind: str, request_id: int) -> bytes:
    if kind == "nested":
        return b"[" * 100_000 + b"]" * 100_000
    if kind == "infinity":
        return (b'{"id": %d, "status": "ok", "data": {"workers": Infinity, "timeout": 1e999, '
                b'"threads": %s, "workers_target": NaN}}' % (request_id, b"9" * 400))
    if kind == "bigname":
        return json.dumps({"id": request_id, "status": "ok",
                           "data": {"proc_name": "n" * 900_000, "workers": 2}}).encode()
    return b"this is not json {"


def serve_control(path: str, kind: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, kind), daemon=True).start()


def handle(conn: socket.socket, kind: str) -> None:
    with conn:
        try:
            for _ in range(8):
                head = conn.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    return
                (n,) = struct.unpack(">I", head)
                request = json.loads(conn.recv(n, socket.MSG_WAITALL))
                if kind == "hang":
                    threading.Event().wait(3600)
                    return
                body = answer_for(kind, int(request.get("id", 0)))
                conn.sendall(struct.pack(">I", len(body)) + body)
        except (OSError, ValueError):
            return


def map_long_paths() -> list:
    deep = os.path.join(DIR, *(["a" * 60] * 60))[:3900].rstrip("/")
    os.makedirs(deep, exist_ok=True)
    path = os.path.join(deep, "site-packages-no")
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    maps = []
    with open(path, "rb") as f:
        for _ in range(200):
            maps.append(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ))
    return maps


def main() -> None:
    for sig in (signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, lambda *_: None)
    if MODE == "ctl":
        path = os.environ.get("FAKE_CTL") or os.path.join(os.environ["HOME"], ".gunicorn",
                                                           "gunicorn.ctl")
        threading.Thread(target=serve_control, args=(path, os.environ.get("FAKE_ANSWER", "nested")),
                         daemon=True).start()
    elif MODE == "maps":
        KEEP.extend(map_long_paths())  # the mappings must stay
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
