"""Benchmark: the real gunicorn-exporter process over HTTP, each scenario in its own
network + pid namespaces, side by side with its baselines, interleaved, repeated.

    sudo .venv/bin/python bench/run.py [--quick] [--out bench/results/latest.md]

Needs root (unshare of network and pid namespaces), Linux >= 6.1 for a private TCP
hash table per namespace (older kernels: shared, and the report says so), `ss`, `ip`,
the venv with gunicorn. node_exporter (Debian `prometheus-node-exporter`) is installed
with apt-get when missing. See bench/README.md for what each scenario sets up and
measures; the report is printed and written to --out. Exit status is non-zero only
when something failed; missed targets are reported in the text.

Rules kept: every server binds to 127.0.0.1 inside a namespace of its own; only
processes started here are signalled, by PID (and a namespace's driver's exit ends
everything in it); every wait has a deadline; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (BENCH, CLK_TCK, ROOT, VENV_BIN, count_sockets, starttime,  # noqa: E402
                    stop_popen)
import report  # noqa: E402

NOSAMPLER = ["--sampler.interval", "0"]
EHASH = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")


class Namespace:
    """One scenario's namespaces, with bench/nsdriver.py as their PID 1."""

    def __init__(self, label: str, ehash: int | None):
        self.label = label
        inner = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
                 sys.executable, str(BENCH / "nsdriver.py")]
        if ehash:
            # An outer, empty network namespace sets the size of its children's TCP hash
            # table: the scenario's namespace then has a table of its own, as large as
            # the host's, so its dumps walk neither the host's sockets nor another
            # scenario's.
            cmd = ["unshare", "--net", "--", "sh", "-c",
                   f'echo {ehash} > {EHASH} && exec "$@"', "sh", *inner]
        else:
            cmd = inner
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.start = starttime(self.proc.pid)

    def send(self, cmd: str, **kw) -> None:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: namespace driver exited (status {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label}: {reply['error']}")
        return reply

    def call(self, cmd: str, **kw) -> dict:
        self.send(cmd, **kw)
        return self.recv()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.stdin.close()
            self.proc.wait(timeout=90)
        except (OSError, subprocess.TimeoutExpired):
            # our child (unshare --kill-child): its end SIGKILLs the namespace's PID 1
            stop_popen(self.proc, self.start)


def open_all(specs: dict[str, dict], ehash: int | None) -> tuple[dict[str, Namespace], dict]:
    """Start every namespace, set them up in parallel; {label: isolation report}."""
    nss = {label: Namespace(label, ehash) for label in specs}
    try:
        for label, spec in specs.items():
            nss[label].send("setup", **spec)
        info = {label: nss[label].recv() for label in specs}
    except BaseException:
        close_all(nss)
        raise
    return nss, info


def close_all(nss: dict[str, Namespace]) -> None:
    for ns in nss.values():
        ns.close()


class Others:
    """How busy the machine was with work other than the bench's during a phase: CPU
    time of the whole host (/proc/stat) minus that of the bench's namespaces and of this
    process, as a share of all CPUs."""

    def __init__(self, nss):
        self.nss = nss
        self.t0 = self._sample()

    def _sample(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = sum(v) - v[3] - v[4]            # all but idle and iowait
        ours = sum(ns.call("nscpu")["ticks"] for ns in self.nss.values())
        me = os.times()
        return time.monotonic(), busy, ours, (me.user + me.system) * CLK_TCK

    def share(self) -> float:
        t1 = self._sample()
        wall = t1[0] - self.t0[0]
        others = (t1[1] - self.t0[1]) - (t1[2] - self.t0[2]) - (t1[3] - self.t0[3])
        return max(0.0, others / CLK_TCK / wall / os.cpu_count())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def warm(nss, pairs, n: int = 3) -> None:
    for _ in range(n):
        for label, target in pairs:
            nss[label].call("scrape", target=target)


def cpu_of(nss, pairs) -> dict:
    out = {}
    for label in {lbl for lbl, _ in pairs}:
        got = nss[label].call("cpu", targets=[t for lbl, t in pairs if lbl == label])
        out.update({(label, t): v for t, v in got.items()})
    return out


def interleaved(nss, steps, reps: int) -> dict:
    """`reps` rounds of every step in turn (A, B, C, A, B, C, ...): {step: [seconds]}."""
    out = {s: [] for s in steps}
    for _ in range(reps):
        for s in steps:
            label, cmd, kw = s
            out[s].append(nss[label].call(cmd, **dict(kw))["s"])
    return out


# --------------------------------------------------------------------------
# the scenarios

def idle_scenarios(quick: bool, node: str | None, ehash) -> dict:
    """(b) 8 workers vs node_exporter, (c) per worker and per master, (e) start-up."""
    specs = {
        "w8": dict(apps=[["app8", 8, 0]], sockets=0, node_exporter=node,
                   exporters={"default": [], "nosampler": NOSAMPLER}),
        "w64": dict(apps=[["app64", 64, 0]], sockets=0, exporters={"nosampler": NOSAMPLER}),
        "m1": dict(apps=[["m0", 1, 0]], sockets=0, exporters={"nosampler": NOSAMPLER}),
        "m8": dict(apps=[[f"m{i}", 1, 0] for i in range(8)], sockets=0,
                   exporters={"nosampler": NOSAMPLER}),
    }
    log("idle host: starting 4 namespaces (8 workers + node_exporter, 64 workers, 1 and 8 masters)")
    nss, info = open_all(specs, ehash)
    try:
        pairs = ([("w8", "node")] if node else []) + [
            ("w8", "default"), ("w8", "nosampler"), ("w64", "nosampler"),
            ("m1", "nosampler"), ("m8", "nosampler")]
        warm(nss, pairs)
        reps = 40 if quick else 150
        log(f"idle host: {reps} interleaved rounds of {len(pairs)} scrapes")
        steps = [(label, "scrape", (("target", t),)) for label, t in pairs]
        busy = Others(nss)
        cpu0, t0 = cpu_of(nss, pairs), time.monotonic()
        lat = interleaved(nss, steps, reps)
        cpu1, wall = cpu_of(nss, pairs), time.monotonic() - t0
        load = busy.share()
        runs = 5 if quick else 12
        log(f"start-up: {runs} runs in the 8-worker namespace")
        busy = Others(nss)
        start = nss["w8"].call("startup", runs=runs)
        start["load"] = busy.share()
    finally:
        close_all(nss)
    return {"info": info, "reps": reps, "wall": wall, "startup": start, "load": load,
            "lat": {(s[0], dict(s[2])["target"]): v for s, v in lat.items()},
            "cpu": {k: (cpu1[k] - cpu0[k]) / CLK_TCK / reps for k in cpu0}}


def socket_scenario(sockets: int, quick: bool, ehash, sampler_windows: tuple[int, float] | None
                    ) -> dict:
    """(a) 64 workers on a host with `sockets` sockets: the full scrape against the bare
    dump of the same tables; (d) the sampler's cost, when `sampler_windows`."""
    label = f"s{sockets // 1000}k"
    log(f"{sockets:,} sockets: starting the namespace (64 workers, ballast, 2 exporters)")
    nss, info = open_all({label: dict(
        apps=[["app64", 64, 16]], sockets=sockets, dump_helper=True,
        exporters={"default": [], "nosampler": NOSAMPLER})}, ehash)
    ns = nss[label]
    try:
        pairs = [(label, "default"), (label, "nosampler")]
        warm(nss, pairs)
        reps = 8 if quick else 30
        log(f"{sockets:,} sockets: {reps} interleaved rounds of scrape, scrape without sampler, "
            "read_all(), raw dump, ss -xtan")
        steps = [(label, "scrape", (("target", "default"),)),
                 (label, "scrape", (("target", "nosampler"),)),
                 (label, "dump", (("kind", "read_all"),)),
                 (label, "dump", (("kind", "raw"),)),
                 (label, "ss", ())]
        busy = Others(nss)
        cpu0 = cpu_of(nss, pairs)
        lat = interleaved(nss, steps, reps)
        cpu1 = cpu_of(nss, pairs)
        load = busy.share()
        out = {"info": info[label], "reps": reps, "load": load,
               "scrape": lat[steps[0]], "scrape_nosampler": lat[steps[1]],
               "read_all": lat[steps[2]], "raw": lat[steps[3]], "ss": lat[steps[4]],
               "cpu": {t: (cpu1[(label, t)] - cpu0[(label, t)]) / CLK_TCK / reps
                       for _, t in pairs},
               "memory": ns.call("memory", target="default")}
        if sampler_windows:
            busy = Others(nss)
            out["sampler"] = sampler_cost(ns, *sampler_windows)
            out["sampler"]["load"] = busy.share()
    finally:
        close_all(nss)
    return out


def sampler_cost(ns: Namespace, windows: int, seconds: float) -> dict:
    """Idle windows (no scrapes): CPU of the exporter with the sampler on and of the one
    with it off, over the same windows."""
    log(f"sampler: {windows} idle windows of {seconds:.0f} s")
    name = "gunicorn_exporter_sampler_spent_seconds_total"
    on, off, spent, samples = [], [], [], []
    for _ in range(windows):
        s0 = ns.call("metric", target="default", name=name)["value"]
        n0 = ns.call("metric", target="default",
                     name="gunicorn_exporter_sampler_samples_total")["value"]
        c0, t0 = ns.call("cpu", targets=["default", "nosampler"]), time.monotonic()
        time.sleep(seconds)
        c1, dt = ns.call("cpu", targets=["default", "nosampler"]), time.monotonic() - t0
        s1 = ns.call("metric", target="default", name=name)["value"]
        n1 = ns.call("metric", target="default",
                     name="gunicorn_exporter_sampler_samples_total")["value"]
        on.append((c1["default"] - c0["default"]) / CLK_TCK / dt)
        off.append((c1["nosampler"] - c0["nosampler"]) / CLK_TCK / dt)
        if s0 is not None and s1 is not None:
            spent.append((s1 - s0) / dt)
            samples.append((n1 - n0) / dt)
    return {"windows": windows, "seconds": seconds, "on": on, "off": off,
            "spent": spent, "rate": samples}


# --------------------------------------------------------------------------

def node_exporter(install: bool) -> str | None:
    for name in ("prometheus-node-exporter", "node_exporter"):
        path = shutil.which(name)
        if path:
            return path
    if not install or os.geteuid() != 0:
        return None
    log("installing prometheus-node-exporter (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-q", "prometheus-node-exporter"],
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "prometheus-node-exporter"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode == 0 and shutil.which("prometheus-node-exporter"):
            break
    return shutil.which("prometheus-node-exporter")


def host_info(node: str | None) -> dict:
    procs = gunicorns = 0
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                cmd = Path(f"/proc/{n}/cmdline").read_bytes()
            except OSError:
                continue
            procs += 1
            gunicorns += b"gunicorn: master" in cmd
    lines, tw = count_sockets()

    def version(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gunicorn": version([str(VENV_BIN / "gunicorn"), "--version"]),
        "node": version([node, "--version"]) if node else None,
        "ss": version(["ss", "-V"]),
        "host_processes": procs, "host_gunicorn_masters": gunicorns,
        "host_sockets": lines - tw, "host_time_wait": tw,
    }


def tree_state() -> str:
    """The commit, and how many files differ from it (read-only git)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "exporter"], capture_output=True, text=True,
                               timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"commit {head or '?'}" + (f" with {len(dirty)} files under exporter/ changed or "
                                       "added since" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gunicorn-exporter benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes)")
    ap.add_argument("--out", default=str(BENCH / "results" / "latest.md"))
    ap.add_argument("--sockets", default="20000,100000",
                    help="host socket counts of scenario (a) (default 20000,100000)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install node_exporter when it is missing")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root: it runs each scenario in its own network and pid "
              "namespaces (unshare)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    load0 = os.getloadavg()
    node = node_exporter(not args.no_install)
    host = host_info(node)
    ehash = None
    if EHASH.exists():
        ehash = abs(int(Path("/proc/sys/net/ipv4/tcp_ehash_entries").read_text()))
    sockets = [int(x) for x in args.sockets.split(",") if x]
    idle = idle_scenarios(args.quick, node, ehash)
    full = []
    for n in sockets:  # the sampler's target is at 20k sockets; other counts: shorter
        win = ((2, 4.0) if args.quick else (3, 10.0)) if n == 20000 else \
            ((1, 4.0) if args.quick else (2, 5.0))
        full.append((n, socket_scenario(n, args.quick, ehash, win)))
    host.update(tree=tree_state(), load_start=load0, load_end=os.getloadavg(), ehash=ehash,
                total=time.monotonic() - t0, quick=args.quick,
                command=" ".join([".venv/bin/python", "bench/run.py", *(argv or sys.argv[1:])]))
    text = report.render(host, idle, full)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
