"""The benchmark's driver inside one scenario's own network + pid namespaces.

bench/run.py starts it as PID 1 of a fresh pid namespace, in a fresh network
namespace, with /proc remounted (`unshare --net --pid --fork --mount-proc
--kill-child`), so what the exporter sees is only what this driver starts: the host's
other processes and sockets (other test runs start gunicorns all the time) stay out of
the figures. When the driver exits, the kernel ends every process left in the namespace.

It reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"cmd": "setup", "apps": [[name, workers, held], ...], "sockets": N,
     "exporters": {name: [extra flags] | {"flags": [...], "tree": checkout}},
     "node_exporter": path|null, "dump_helper": bool, "held_on_dependency": bool}
    (held_on_dependency: the held requests call a peer in here that never answers,
    /upstream?port=P, instead of sleeping: each busy worker waits on a dependency)
    {"cmd": "scrape", "target": name}        -> {"s": seconds, "bytes": n}
    {"cmd": "cpu", "targets": [name, ...]}   -> {name: utime+stime ticks}
    {"cmd": "metric", "target": name, "name": metric} -> {"value": float|null}
    {"cmd": "dump", "kind": "read_all"|"raw"} -> {"s": seconds} (timed in a helper process)
    {"cmd": "ss"}                            -> {"s": seconds} (one `ss -xtan`, output dropped)
    {"cmd": "memory", "target": name}       -> VmRSS, VmHWM in KiB
    {"cmd": "nscpu"}                         -> {"ticks": CPU of every process in here}
    {"cmd": "startup", "runs": n}            -> {"ms": [...], "rss_mib": [...]}
    {"cmd": "quit"}

Scrapes are sent as Prometheus sends them (its Accept header, gzip, the scrape timeout
header) over one kept-alive connection per target, as Prometheus keeps one.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ROOT, Ballast, Gunicorn, count_sockets, cpu_ticks, poll,  # noqa: E402
                    starttime, stop_popen, vm_status)

PROMETHEUS_HEADERS = {  # what Prometheus 2.x sends with every scrape
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.45.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


def silent_peer(port: int) -> socket.socket:
    """A listener on 127.0.0.1 whose connections are accepted and never answered (the
    kernel accepts into its queue; nobody reads): a dependency that hangs."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    return s


class Target:
    """An HTTP server under test (an exporter or node_exporter) that we started."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, cwd: str | None = None):
        self.name, self.port = name, port
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd)
        self.start = poll(lambda: starttime(self.proc.pid), 10, what=name)
        self.conn: http.client.HTTPConnection | None = None
        self.used = 0.0     # time.monotonic() of the last request on self.conn
        self.logpath = log

    def wait_up(self) -> None:
        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.logpath.read_text()[-2000:]}")
            try:
                return self.get("/metrics", {})[0] == 200
            except OSError:
                return False
        poll(up, 30, 0.05, f"{self.name} to answer")

    def get(self, path: str, headers: dict) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("GET", path, headers=headers)
                r = self.conn.getresponse()
                body = r.read()
                self.used = time.monotonic()
                return r.status, body
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError,
                    http.client.CannotSendRequest):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def scrape(self) -> dict:
        # connect outside the timed part (Prometheus reuses its connection); a connection
        # idle for 5 s may be closed by the server (keep-alive timeout): open a new one
        if self.conn is not None and time.monotonic() - self.used > 5:
            self.conn.close()
            self.conn = None
        if self.conn is None or self.conn.sock is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.connect()
        t = time.perf_counter()
        status, body = self.get("/metrics", PROMETHEUS_HEADERS)
        took = time.perf_counter() - t
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        return {"s": took, "bytes": len(body)}

    def text(self) -> str:
        status, body = self.get("/metrics", {"Accept-Encoding": "gzip"})
        return (gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body).decode()

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        stop_popen(self.proc, self.start)
        self.log.close()


class DumpHelper:
    """A separate process in this namespace that times sockdiag dumps in-process."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--dump-helper"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask("read_all")  # warm-up (imports, page cache)

    def ask(self, kind: str) -> float:
        self.proc.stdin.write(kind + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("dump helper died")
        return float(line)

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def dump_helper_main() -> int:
    """--dump-helper: one line in ("read_all" or "raw"), seconds out."""
    from exporter.linux import diagmsg, netlink, sockdiag

    def drain(sock, request: bytes, seq: int, buf: bytearray) -> None:
        """Send one dump request; receive and walk (netlink headers only) to NLMSG_DONE."""
        sock.sendto(request, (0, 0))
        while True:  # bounded by the socket's timeout and the kernel's NLMSG_DONE
            n = sock.recv_into(buf)
            if netlink.walk(buf, n, diagmsg.SOCK_DIAG_BY_FAMILY, seq)[1]:
                return

    def raw() -> None:
        """The five dumps read_all() asks for, received and walked, no message decoded."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             diagmsg.NETLINK_SOCK_DIAG)
        sock.settimeout(10)
        buf = bytearray(65536)
        try:
            drain(sock, diagmsg.unix_request(1), 1, buf)
            for seq, fam in ((2, socket.AF_INET), (3, socket.AF_INET6)):
                drain(sock, diagmsg.inet_request(fam, diagmsg.ALL_STATES_MASK, seq), seq, buf)
            for seq, fam in ((4, socket.AF_INET), (5, socket.AF_INET6)):
                drain(sock, diagmsg.listen_request(fam, seq), seq, buf)
        finally:
            sock.close()

    fns = {"read_all": lambda: sockdiag.read_all(timeout=10), "raw": raw}
    for line in sys.stdin:
        fn = fns[line.strip()]
        t = time.perf_counter()
        fn()
        print(time.perf_counter() - t, flush=True)
    return 0


def namespace_ticks() -> int:
    """CPU of every process in this pid namespace (their children's, once reaped, too)."""
    total = 0
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                with open(f"/proc/{n}/stat") as f:
                    text = f.read()
                fields = text[text.rindex(")") + 2:].split()
                total += sum(int(x) for x in fields[11:15])
            except (OSError, ValueError):
                continue
    return total


class Driver:
    def __init__(self, out):
        self.out = out
        self.tmp = Path(tempfile.mkdtemp(prefix="gexp-bench-ns-"))
        self.apps: list[Gunicorn] = []
        self.targets: dict[str, Target] = {}
        self.ballast: Ballast | None = None
        self.helper: DumpHelper | None = None
        self.silent: socket.socket | None = None   # the hanging dependency, if any
        # The namespace's port space is ours: fixed ports below the ephemeral range, so
        # servers started at once cannot be handed the same "free" port.
        self._next_port = 20000

    def port(self) -> int:
        self._next_port += 1
        return self._next_port

    def setup(self, apps, sockets, exporters, node_exporter=None, dump_helper=False,
              held_on_dependency=False) -> dict:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        for name, workers, _held in apps:
            g = Gunicorn(name, workers, self.tmp, port=self.port())
            g.launch()
            self.apps.append(g)
        path = None
        if held_on_dependency:
            self.silent = silent_peer(self.port())
            path = f"/upstream?port={self.silent.getsockname()[1]}"
        for g, (_n, _w, held) in zip(self.apps, apps):
            g.wait_workers()
            if held:
                g.hold(held, path=path)
        lines, tw = count_sockets()
        if sockets and sockets > lines - tw:
            self.ballast = Ballast(sockets - (lines - tw))
        if dump_helper:
            self.helper = DumpHelper()
        for name, spec in exporters.items():
            flags, tree = (spec, str(ROOT)) if isinstance(spec, list) else \
                (spec.get("flags", []), spec["tree"])
            port = self.port()
            self.targets[name] = Target(
                name, [sys.executable, "-m", "exporter", "--web.listen-address",
                       f"127.0.0.1:{port}", *flags], port, self.tmp / f"{name}.log", tree)
        if node_exporter:
            port = self.port()
            self.targets["node"] = Target("node", [node_exporter, "--web.listen-address",
                                                   f"127.0.0.1:{port}"], port,
                                          self.tmp / "node.log")
        for t in self.targets.values():
            t.wait_up()
        return self.isolation()

    def isolation(self) -> dict:
        """What this namespace holds, and what each exporter in it reports."""
        from exporter.linux import sockdiag
        procs = {}
        for n in os.listdir("/proc"):
            if n.isdigit():
                try:
                    comm = Path(f"/proc/{n}/comm").read_text().strip()
                except OSError:
                    continue
                procs[comm] = procs.get(comm, 0) + 1
        lines, tw = count_sockets()
        table = sockdiag.read_all()
        seen = {}
        for name, t in self.targets.items():
            if name == "node":
                continue
            text = t.text()
            seen[name] = {
                "apps": sorted(re.findall(r'^gunicorn_up\{app="([^"]*)"\} 1', text, re.M)),
                "workers": {a: float(v) for a, v in re.findall(
                    r'^gunicorn_workers\{app="([^"]*)"\} (\S+)', text, re.M)},
                "active": sum(float(v) for v in re.findall(
                    r'^gunicorn_worker_connections\{[^}]*state="active"[^}]*\} (\S+)', text, re.M)),
                "waiting_on_dependencies": sum(float(v) for v in re.findall(
                    r'^gunicorn_dependency_waiting_workers\{[^}]*\} (\S+)', text, re.M)),
            }
        return {"processes": procs, "ss_lines": lines, "time_wait": tw,
                "with_inode": len(table.unix) + len(table.inet),
                "expected": {g.name: g.workers for g in self.apps},
                "held": sum(len(g.clients) for g in self.apps), "seen": seen,
                "ballast": self.ballast.ready if self.ballast else None}

    def metric(self, target: str, name: str) -> dict:
        m = re.search(rf"^{re.escape(name)} (\S+)$", self.targets[target].text(), re.M)
        return {"value": float(m.group(1)) if m else None}

    def startup(self, runs: int) -> dict:
        import startup
        startup.one_run(str(ROOT))  # warm the page cache
        got = [startup.one_run(str(ROOT)) for _ in range(runs)]
        return {"ms": [t for t, _ in got], "rss_mib": [r for _, r in got]}

    def ss(self) -> dict:
        t = time.perf_counter()
        subprocess.run(["ss", "-xtan"], stdout=subprocess.DEVNULL, check=True)
        return {"s": time.perf_counter() - t}

    def handle(self, cmd: dict) -> dict:
        c = cmd.pop("cmd")
        if c == "setup":
            return self.setup(**cmd)
        if c == "scrape":
            return self.targets[cmd["target"]].scrape()
        if c == "cpu":
            return {n: cpu_ticks(self.targets[n].proc.pid) for n in cmd["targets"]}
        if c == "metric":
            return self.metric(cmd["target"], cmd["name"])
        if c == "dump":
            return {"s": self.helper.ask(cmd["kind"])}
        if c == "ss":
            return self.ss()
        if c == "nscpu":
            return {"ticks": namespace_ticks()}
        if c == "memory":
            return vm_status(self.targets[cmd["target"]].proc.pid)
        if c == "startup":
            return self.startup(cmd["runs"])
        raise ValueError(f"unknown command {c!r}")

    def close(self) -> None:
        for t in self.targets.values():
            t.stop()
        if self.helper:
            self.helper.stop()
        if self.ballast:
            self.ballast.stop()
        for g in self.apps:
            g.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self) -> int:
        try:
            for line in sys.stdin:
                cmd = json.loads(line)
                if cmd.get("cmd") == "quit":
                    break
                try:
                    reply = self.handle(cmd)
                except Exception as e:  # noqa: BLE001 - reported to bench/run.py, which stops
                    reply = {"error": f"{type(e).__name__}: {e}"}
                self.out.write(json.dumps(reply) + "\n")
                self.out.flush()
        finally:
            self.close()
        return 0


def main() -> int:
    if sys.argv[1:] == ["--dump-helper"]:
        return dump_helper_main()
    if os.getpid() != 1:
        print("nsdriver.py runs as PID 1 of its own pid namespace (bench/run.py starts it)",
              file=sys.stderr)
        return 2
    # Answers go to a private copy of stdout; anything a child prints goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    return Driver(out).run()


if __name__ == "__main__":
    sys.exit(main())
