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
            is 800 kB of long paths;
  workers   also forks $FAKE_WORKERS workers (default 1), each holding one heartbeat file
            (`wgunicorn-*`, unlinked, held by the master too, as gunicorn's) whose beat is
            long past: stuck workers to anyone reading /proc. Each runs $FAKE_WORKER:
            sleep (a cheap stuck worker), garbage (its interpreter state overwritten with
            random bytes, Python 3.11), deep (a stack 5,000 frames deep), names (frames
            named by 100,000-character strings), exit (exits the moment a py-spy process
            names its pid; 300 threads make py-spy take tens of ms to read it), stopped
            (SIGSTOPs itself: it never runs, never answers anything), argv (re-executes
            itself as `.../gunicorn` with arguments of 200 kB of control characters,
            invalid UTF-8 and bidirectional overrides; FAKE_MODE=idle: it only waits).
Stops on SIGTERM/SIGKILL.
"""

import json
import mmap
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import types

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


BEAT: list = []     # a fake worker's heartbeat fd


def stale() -> None:
    """Make this worker look stuck: its last beat long ago. Called once it is ready, so
    that a reader sees the worker as it is meant to be, not half-started."""
    fd = BEAT[0] if BEAT else int(os.environ.get("FAKE_BEAT_FD", "-1"))
    if fd >= 0:
        os.utime(fd, (1.0, 1.0))     # a monotonic beat long ago (gunicorn >= 22 style)


def down(n: int) -> None:
    """A stack n frames deep, then look stuck and wait."""
    if n == 0:
        stale()
        while True:
            signal.pause()
    return down(n - 1)


def run_worker(kind: str) -> None:
    """A fake worker's life (never returns)."""
    if kind == "garbage" and sys.version_info[:2] == (3, 11):
        import ctypes
        runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
        interp = ctypes.c_void_p.from_address(runtime + 40).value   # interpreters.head
        ctypes.memmove(interp + 8, os.urandom(24), 24)
        stale()
    elif kind in ("deep", "garbage"):
        sys.setrecursionlimit(10_000)
        down(5000)
    elif kind == "names":
        globals()["down"] = types.FunctionType(down.__code__.replace(
            co_name="n" * 100_000, co_filename="/" + "f" * 100_000), globals())
        down(50)
    elif kind == "exit":
        for _ in range(300):        # py-spy takes about 80 ms to read 300 threads
            threading.Thread(target=lambda: threading.Event().wait(), daemon=True).start()
        stale()
        me = b"\0%d\0" % os.getpid()
        first_seen: dict = {}
        while True:        # poll: py-spy's command line names the pid it reads
            now = time.monotonic()
            for entry in os.listdir("/proc"):
                # a new process is looked at for 0.2 s: it may not have exec'd py-spy yet
                if not entry.isdigit() or now - first_seen.setdefault(entry, now) > 0.2:
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        argv = f.read(512)
                except OSError:
                    continue
                if b"py-spy" in argv and argv.endswith(me):
                    os._exit(0)
            if len(first_seen) > 100_000:
                first_seen.clear()
            threading.Event().wait(0.002)
    elif kind == "stopped":
        stale()
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "argv":
        junk = "".join(chr(c) for c in range(1, 32)) * 3000 + "\udcff\udcfe"
        os.execve(sys.executable, [sys.executable, sys.argv[0], junk, "\u202e" * 1000, junk],
                  dict(os.environ, FAKE_MODE="idle", FAKE_BEAT_FD=str(BEAT[0])))
    stale()
    while True:
        signal.pause()


def fork_workers(n: int, kind: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)     # exited workers are reaped for us
    beats = []
    for _ in range(n):
        fd, path = tempfile.mkstemp(prefix="wgunicorn-", dir=DIR)
        os.unlink(path)
        now = time.monotonic()
        os.utime(fd, (now, now))      # a beat now; the worker makes it stale once ready
        beats.append(fd)
    for fd in beats:
        if os.fork() == 0:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG:
            if os.getppid() == 1:                       # die with the fake master
                os._exit(0)
            for other in beats:
                if other != fd:
                    os.close(other)
            os.set_inheritable(fd, True)
            BEAT.append(fd)
            for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)     # as a gunicorn worker does
            try:
                run_worker(kind)
            finally:
                os._exit(0)


def main() -> None:
    if MODE == "idle":          # a worker re-executed (argv): no arbiter signal handlers
        stale()
        while True:
            signal.pause()
    for sig in (signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, lambda *_: None)
    if MODE == "ctl":
        path = os.environ.get("FAKE_CTL") or os.path.join(os.environ["HOME"], ".gunicorn",
                                                           "gunicorn.ctl")
        threading.Thread(target=serve_control, args=(path, os.environ.get("FAKE_ANSWER", "nested")),
                         daemon=True).start()
    elif MODE == "maps":
        KEEP.extend(map_long_paths())  # the mappings must stay
    elif MODE == "workers":
        fork_workers(int(os.environ.get("FAKE_WORKERS", "1")), os.environ.get("FAKE_WORKER", "sleep"))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
