"""Rules over gunicorn's settings, its processes and the kernel: one function per rule,
registered with `@rule(name, *catalogue IDs)`. Each reads a `View` (plain data) and
yields `Finding`s; thresholds come from `v.t` (the `--doctor.*` flags). What each rule
checks, and why, is in docs/doctor.md. The Postgres rules are in dbrules.py.
"""

from __future__ import annotations

from exporter.doctor import caddy, nginx
from exporter.doctor.model import Evidence as E
from exporter.doctor.model import Finding, View, rule, source_of
from exporter.snapshot import AppSnapshot

# classes that accept up to --worker-connections per worker
CONNECTION_BOUNDED = ("gthread", "gevent", "eventlet", "tornado")
ASYNC = ("gevent", "eventlet", "tornado", "uvicorn", "asgi")
ASGI_BACKLOG = 100   # gunicorn 27's asgi worker calls listen() again with asyncio's default
NETLINK = "accept queue limit of the listening socket (netlink sock_diag, as ss -l Send-Q)"


def _known(app: AppSnapshot, setting: str, value) -> int | float | None:
    """The value when the exporter knows it from the app itself (not from the kernel)."""
    return value if app.settings_source.get(setting) not in ("kernel", "unknown") else None


def _somaxconn(v: View, a: AppSnapshot) -> tuple[int | None, str]:
    """somaxconn of the master's network namespace: its own when the collector read it,
    else the exporter's, unless the master is known to live in another namespace."""
    own = a.somaxconn
    if own is not None:
        return own, "net.core.somaxconn of the master's network namespace"
    if a.netns is not None or v.host is None:
        return None, ""
    return v.host.somaxconn, "/proc/sys/net/core/somaxconn"


def _workers(a: AppSnapshot) -> int:
    return a.workers_desired if a.workers_desired is not None else len(a.workers)


@rule("backlog-capped", "W11")
def backlog_capped(v: View):
    for a in v.apps:
        somax, where = _somaxconn(v, a)
        limits = [lst.queue_max for lst in a.listeners if lst.queue_max is not None]
        if somax is None or not limits:
            continue  # limits come from netlink only
        asked = _known(a, "backlog", a.backlog)
        if (asked is not None and asked <= somax) or (asked is None and max(limits) < somax):
            continue
        ev = {"somaxconn": E(somax, where), "queue_limit": E(max(limits), NETLINK)}
        if asked is not None:
            ev["backlog"] = E(asked, source_of(a, "backlog"))
        what = f"--backlog {asked}" if asked is not None else "a --backlog of at least that"
        yield Finding(a.app, "W11", "backlog-capped", "warning", ev,
                      f"The kernel cut {what} to net.core.somaxconn = {somax} without a word: "
                      "the accept queue holds fewer connections than configured, and past it "
                      "connections are dropped (W11). Raise net.core.somaxconn to at least the "
                      "backlog (sysctl -w net.core.somaxconn=N, persisted in /etc/sysctl.d/; in "
                      "a container, the pod's sysctl) and restart gunicorn so it listens again, "
                      "or lower --backlog so the configuration says what is real.")


@rule("queue-limit-low", "W11")
def queue_limit_low(v: View):
    for a in v.apps:
        somax, where = _somaxconn(v, a)
        listeners = [lst for lst in a.listeners if lst.queue_max is not None]
        if not listeners:
            continue
        low = min(listeners, key=lambda lst: lst.queue_max)
        asked = _known(a, "backlog", a.backlog)
        ceiling = min(x for x in (asked, somax, 2**31) if x is not None)
        ev = {"listener": E(low.address, "the app's listening sockets"),
              "queue_limit": E(low.queue_max, NETLINK)}
        if asked is not None and low.queue_max < ceiling:
            why = (f"below the --backlog {asked} gunicorn asked for: the socket was created "
                   "elsewhere (systemd socket activation keeps the unit's Backlog=, a USR2 "
                   "parent its own) or a worker called listen() again")
            ev["backlog"] = E(asked, source_of(a, "backlog"))
        elif asked is None and a.backlog is not None and low.queue_max < a.backlog:
            why = (f"below the app's other listeners ({a.backlog}): sockets from systemd "
                   "socket activation keep the unit's Backlog=")
        elif low.queue_max < v.t.min_queue_limit:
            ev["min_queue_limit"] = E(v.t.min_queue_limit, "--doctor.min-queue-limit")
            why = "small: a burst of that many connections while every worker is busy overflows it"
            if a.worker_class == "asgi" and low.queue_max <= ASGI_BACKLOG:
                why += (f". gunicorn 27's asgi worker calls listen() again with asyncio's default "
                        f"backlog of {ASGI_BACKLOG}, whatever --backlog says")
        else:
            continue
        if somax is not None:
            ev["somaxconn"] = E(somax, where)
        yield Finding(a.app, "W11", "queue-limit-low", "warning", ev,
                      f"The accept queue of {low.address} holds at most {low.queue_max} "
                      f"connections, {why}. Connections beyond the limit are dropped or reset "
                      "(W11). Give the socket the backlog you mean (gunicorn --backlog, or "
                      "Backlog= in the .socket unit) and check it with ss -l (Send-Q).")


def _proxy_timeout(v: View, a: AppSnapshot) -> tuple[float, str]:
    """The shortest proxy timeout in front of the app (0: a Caddy that waits for ever)."""
    listeners = [lst.address for lst in a.listeners]
    found = [f for f in (nginx.timeout_for(v.facts.nginx, listeners),
                         caddy.timeout_for(v.facts.caddy, listeners)) if f is not None]
    if found:
        return min(found, key=lambda f: (f[0] or float("inf"), f[1]))
    return v.t.proxy_timeout, ("--doctor.proxy-timeout (no nginx proxy_pass or Caddy "
                               "reverse_proxy to this app was found)")


@rule("timeout-vs-proxy", "W8")
def timeout_vs_proxy(v: View):
    for a in v.apps:
        if a.timeout is None:
            continue
        proxy, where = _proxy_timeout(v, a)
        suggest = max(1, int(proxy) - 5) if proxy else 30
        ev = {"timeout": E(a.timeout, source_of(a, "timeout")), "proxy_timeout": E(proxy, where),
              "worker_class": E(a.worker_class, source_of(a, "worker_class"))}
        if a.timeout == 0 and not proxy:
            advice = ("--timeout 0 turns gunicorn's watchdog off, and the proxy in front (Caddy "
                      "without response_header_timeout) waits for ever too: a worker stuck in a "
                      "request is never killed and its client never answered; the worker is "
                      "lost to the pool (W8, W5). Set gunicorn's --timeout (e.g. 30 s) and "
                      "Caddy's response_header_timeout a little above it.")
        elif not proxy:
            continue                    # gunicorn gives up first: nothing outlives the proxy
        elif a.timeout == 0:
            advice = ("--timeout 0 turns gunicorn's watchdog off: a worker stuck in a request (or, "
                      "for threaded and async classes, in a blocked main loop) is never killed, "
                      f"while the proxy gives up after {proxy:g} s and answers 504; the worker "
                      "keeps working for nobody and is lost to the pool (W8, W5). Set --timeout a "
                      f"little below the proxy's, e.g. {suggest} s.")
        elif a.timeout > proxy:
            advice = (f"The proxy gives up after {proxy:g} s (504, Heroku H12) while gunicorn "
                      f"lets a request run {a.timeout:g} s: the worker keeps working on a request "
                      "nobody waits for (W8). Set --timeout a little below the proxy's (e.g. "
                      f"{suggest} s), or raise the proxy's timeout for the routes that need it."
                      + ("" if a.worker_class == "sync" else " For this worker class --timeout "
                         "bounds a blocked main loop rather than a request."))
        else:
            continue
        yield Finding(a.app, "W8", "timeout-vs-proxy", "warning", ev, advice)


@rule("gthread-worker-connections", "C3", "W9")
def gthread_worker_connections(v: View):
    for a in v.apps:
        if a.worker_class != "gthread" or not a.threads or not a.worker_connections:
            continue
        limit = v.t.gthread_ratio * a.threads
        if a.worker_connections <= limit:
            continue
        keepalive = a.keepalive
        ev = {"worker_connections": E(a.worker_connections, source_of(a, "worker_connections")),
              "threads": E(a.threads, source_of(a, "threads")),
              "keepalive": E(keepalive, source_of(a, "keepalive")),
              "advised_max": E(limit, "--doctor.gthread-connections-per-thread x --threads")}
        hang = (f" With --keep-alive {keepalive:g} s, idle keep-alive connections hold those "
                "places too, until the worker reaches --worker-connections and stops accepting "
                "(C3): shorten --keep-alive (2-5 s) or let nginx keep the client connections."
                if keepalive else "")
        yield Finding(a.app, "C3" if keepalive else "W9", "gthread-worker-connections", "warning", ev,
                      f"Each gthread worker accepts up to {a.worker_connections} connections but "
                      f"serves only {a.threads} at once: the rest wait inside the worker, where "
                      "idle workers cannot take them and the accept queue does not show them (W9)."
                      f"{hang} Set --worker-connections to a few times --threads (e.g. "
                      f"{a.threads * 2}), so excess connections wait in the accept queue.")


def _held(w) -> int:
    """Descriptors a worker holds besides client connections (files, DB, listeners)."""
    clients = (w.connections_active or 0) + (w.connections_idle or 0) + \
        (w.connections_client_closed or 0)
    return max(0, (w.open_fds or 0) - clients)


@rule("fd-limit", "W10")
def fd_limit(v: View):
    for a in v.apps:
        if a.worker_class not in CONNECTION_BOUNDED or not a.worker_connections:
            continue
        limited = [w for w in a.workers if w.fd_limit]
        if not limited:
            continue
        w = min(limited, key=lambda w: w.fd_limit)
        held = max((_held(x) for x in a.workers if x.open_fds is not None), default=0)
        need = a.worker_connections + held
        if need <= v.t.fd_ratio * w.fd_limit:
            continue
        ev = {"fd_limit": E(w.fd_limit, f"soft RLIMIT_NOFILE of worker {w.slot} (/proc/PID/limits)"),
              "worker_connections": E(a.worker_connections, source_of(a, "worker_connections")),
              "other_fds": E(held, "fds a worker holds besides client connections (/proc/PID/fd)"),
              "advised_max_share": E(v.t.fd_ratio, "--doctor.fd-ratio")}
        yield Finding(a.app, "W10", "fd-limit", "critical" if need > w.fd_limit else "warning", ev,
                      f"A worker at --worker-connections {a.worker_connections} needs about {need} "
                      f"file descriptors, {need / w.fd_limit:.0%} of its limit {w.fd_limit}: "
                      "accept() fails with EMFILE before the worker is full (W10). Raise the "
                      "limit (LimitNOFILE= in the systemd unit, ulimit -n, the container's nofile "
                      f"rlimit) to at least {int(need / max(v.t.fd_ratio, 0.01)) + 1}, or lower "
                      "--worker-connections.")


@rule("sync-io-bound", "W1")
def sync_io_bound(v: View):
    if not v.interval:
        return
    for a in v.apps:
        prev = v.previous.get(a.app)
        if a.worker_class != "sync" or prev is None:
            continue
        before = {w.pid: w for w in prev.workers if w.connections_active is not None}
        pairs = [(before[w.pid], w) for w in a.workers
                 if w.pid in before and w.connections_active is not None]
        busy = sum((p.connections_active > 0) + (w.connections_active > 0) for p, w in pairs) / 2
        if not busy:
            continue
        ratio = busy / len(pairs)
        cpu = sum(max(0.0, w.cpu_seconds - p.cpu_seconds) for p, w in pairs) / v.interval / busy
        if ratio < v.t.io_busy_ratio or cpu > v.t.io_cpu_ratio:
            continue
        ev = {"busy_ratio": E(round(ratio, 3), f"workers with a request in flight in 2 samples "
                                               f"{v.interval:.1f} s apart (/proc/PID/fd, sock_diag)"),
              "cpu_per_busy_worker": E(round(cpu, 3), "CPU seconds per second of a busy worker "
                                                      "between the samples (/proc/PID/stat)"),
              "workers": E(len(pairs), "workers present in both samples"),
              "thresholds": E([v.t.io_busy_ratio, v.t.io_cpu_ratio],
                              "--doctor.io-busy-ratio, --doctor.io-cpu-ratio")}
        yield Finding(a.app, "W1", "sync-io-bound", "warning", ev,
                      f"Sync workers had a request in flight {ratio:.0%} of the time but used "
                      f"{cpu:.2f} CPU seconds per second while busy: they wait on I/O (a database, "
                      "an HTTP API), and a sync worker that waits serves nobody else, so moderate "
                      "concurrency already queues requests (W1, I2). Use a class that serves others "
                      "meanwhile: gthread (--threads 4-8) or gevent/eventlet (with pooled DB "
                      "connections, see C6); or more workers while memory allows (I1).")


MiB = 1024 * 1024


def _memory_fit(v: View, a: AppSnapshot) -> tuple[dict, str]:
    """Evidence and a sentence on how many more workers fit in the memory the master's
    host or cgroup has left, a worker costing its USS (not its RSS: after --preload most
    of a worker's RSS is shared with the master)."""
    uss = [w.unique_memory_bytes for w in a.workers if w.unique_memory_bytes] or \
        v.facts.worker_uss.get(a.master_pid, [])
    room = v.facts.memory_room.get(a.master_pid)
    if not uss or room is None:
        return {}, ""
    per = max(1, sorted(uss)[len(uss) // 2])
    n = room.free // per
    ev = {"worker_memory": E(per, f"median USS of {len(uss)} worker(s) (psutil, "
                                  "/proc/PID/smaps_rollup)"),
          "free_memory": E(room.free, room.source),
          "more_workers_fit": E(n, "free_memory / worker_memory")}
    return ev, (f" Memory allows it: {n} more worker(s) fit in the {room.free / MiB:.0f} MiB "
                f"this host or cgroup has free, at about {per / MiB:.0f} MiB each (USS)."
                if n else f" But no more fit in memory: {room.free / MiB:.0f} MiB free, a worker "
                f"adds about {per / MiB:.0f} MiB (USS); threads (gthread) cost less.")


@rule("workers-vs-cores", "W2", "I3")
def workers_vs_cores(v: View):
    groups: dict[str, list[AppSnapshot]] = {}
    for a in v.apps:
        if a.master_pid in v.facts.cpus:
            groups.setdefault(v.facts.cpus[a.master_pid].group, []).append(a)
    for apps in groups.values():
        cpu = v.facts.cpus[apps[0].master_pid]
        total = sum(_workers(a) for a in apps)
        low, high = v.t.workers_min_per_core * cpu.cores, v.t.workers_max_per_core * cpu.cores + 1
        if low <= total <= high:
            continue
        thumb = 2 * cpu.cores + 1
        for a in apps:
            ev = {"workers": E(_workers(a), source_of(a, "workers")), "cpus": E(cpu.cores, cpu.source),
                  "advised_range": E([low, high], "--doctor.workers-min-per-core x CPUs .. "
                                                  "--doctor.workers-max-per-core x CPUs + 1")}
            if len(apps) > 1:
                ev["workers_on_these_cpus"] = E(total, "sum over " + ", ".join(sorted(x.app for x in apps)))
            if total < low:
                memory, fits = _memory_fit(v, a)
                yield Finding(a.app, "W2", "workers-vs-cores", "warning", {**ev, **memory},
                              f"{total} worker(s) for {cpu.cores:g} CPUs: when requests outnumber "
                              "workers they wait in the accept queue while CPUs sit idle (W2). A "
                              f"common start is 2 x CPUs + 1 = {thumb:g} for sync and gthread workers "
                              "(about one per CPU for gevent, eventlet and uvicorn, which serve many "
                              "requests each); then follow the busy ratio." + fits)
            else:
                yield Finding(a.app, "I3", "workers-vs-cores", "warning", ev,
                              f"{total} workers for {cpu.cores:g} CPUs: each worker is a process "
                              "with its own copy of the app (memory, I1), and past 2 x CPUs + 1 = "
                              f"{thumb:g} more processes add memory and context switches, not "
                              "throughput (I3). Lower --workers; for requests that wait on I/O, "
                              "threads (gthread) or green threads cost less than processes.")


@rule("control-socket-shared", "W4")
def control_socket_shared(v: View):
    by_path: dict[str, list[AppSnapshot]] = {}
    for a in v.apps:
        path = v.facts.control_sockets.get(a.master_pid)
        if path:
            by_path.setdefault(path, []).append(a)
    for path, apps in by_path.items():
        if len(apps) < 2:
            continue
        for a in apps:
            ev = {"control_socket": E(path, f"listening unix socket of master {a.master_pid} "
                                            "(/proc/PID/fd, netlink sock_diag)"),
                  "other_apps": E(sorted(o.app for o in apps if o is not a),
                                  "masters listening on the same path")}
            yield Finding(a.app, "W4", "control-socket-shared", "warning", ev,
                          f"{len(apps)} masters bound the control socket {path}; only the last to "
                          "start owns the file, so gunicornc commands meant for this app (reload, "
                          "worker kill, shutdown) reach another master, and a shutdown sent to the "
                          "wrong app takes it down (W4); the exporter can read only that one's "
                          "settings. gunicorn's default path is one per user ($XDG_RUNTIME_DIR/"
                          "gunicorn.ctl or $HOME/.gunicorn/gunicorn.ctl): give each master its own "
                          "--control-socket (e.g. /run/APP/gunicorn.ctl), or --no-control-socket.")
