"""The markdown report of bench/run.py: one table per scenario, then the targets."""

from __future__ import annotations

import time

from common import CLK_TCK, med, ms, spread

# Targets from issue 12 ("Speed").
T_DUMP = 1.5          # full scrape / bare dump of the same tables, 64 workers, 20k and 100k
T_NODE_LATENCY = 1.2  # median scrape / node_exporter's, idle host, 8 workers
T_NODE_CPU = 1.0      # CPU per scrape / node_exporter's
T_WORKER = 0.29e-3 / 2   # CPU seconds per worker per scrape: halved from 0.29 ms
T_MASTER = 1.5e-3 / 2    # CPU seconds per master per scrape: halved from about 1.5 ms
T_SAMPLER = 0.01      # share of one core, 10 Hz, 64 workers, 20k sockets
T_STARTUP = 0.500     # seconds from exec to the first good scrape (issue 21: < 500 ms)


def pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def isolation(host: dict, idle: dict, full: list) -> list[str]:
    out = ["### Isolation", "",
           f"Outside the namespaces the host had {host['host_processes']} processes, "
           f"{host['host_gunicorn_masters']} of them gunicorn masters of other runs, and "
           f"{host['host_sockets']:,} sockets (`ss -xtanH`, plus {host['host_time_wait']:,} "
           "TIME-WAIT). Inside each scenario's namespaces:", "",
           "| namespace | processes (gunicorn) | sockets: `ss -xtan` lines / with inode | "
           "apps started (workers) | apps every exporter in it reported (workers) | held "
           "requests (exporter saw active) |",
           "|---|---:|---:|---|---|---:|"]
    rows = [(k, v) for k, v in idle["info"].items()] + \
        [(f"s{n // 1000}k", r["info"]) for n, r in full]
    for label, info in rows:
        procs = sum(info["processes"].values())
        guni = sum(v for k, v in info["processes"].items() if k.startswith("gunicorn"))
        started = ", ".join(f"{a} ({w})" for a, w in info["expected"].items())
        seen_sets = {tuple((a, info_s["workers"].get(a)) for a in info_s["apps"])
                     for info_s in info["seen"].values()}
        seen = "; ".join(", ".join(f"{a} ({w:.0f})" for a, w in s) for s in seen_sets)
        ok = all(s == tuple((a, float(w)) for a, w in sorted(info["expected"].items()))
                 for s in seen_sets)
        active = {v["active"] for v in info["seen"].values()}
        out.append(f"| {label} | {procs} ({guni}) | {info['ss_lines']:,} / {info['with_inode']:,} "
                   f"| {started} | {seen}{'' if ok else ' (**differs**)'} | {info['held']} "
                   f"({', '.join(f'{a:.0f}' for a in sorted(active))}) |")
    return out + [""]


def section_a(full: list) -> list[str]:
    out = ["### (a) Full scrape against the bare dump of the same tables (64 workers)", "",
           "Milliseconds, median (min-max) of the interleaved rounds. *scrape*: GET /metrics "
           "of the exporter with its default flags (every collector, the sampler at 100 ms); "
           "*sampler off*: a second exporter in the same namespace with `--sampler.interval 0`; "
           "*read_all()*: `exporter.linux.sockdiag.read_all()`, the unfiltered dump that "
           "decodes every socket (unix, TCP, TCP6, listeners' drops), timed in a separate "
           "process in the same namespace; *walk only*: the same five dumps received and "
           "walked (netlink headers) but no message decoded; *ss -xtan*: one run, output to "
           "/dev/null, exec included. *CPU/scrape*: utime+stime of the sampler-off exporter "
           "over the rounds / rounds.", "",
           "| host sockets: `ss -xtan` / with inode | rounds (others' CPU) | scrape | sampler off | read_all() "
           "| walk only | ss -xtan | scrape / read_all() | scrape / walk only | CPU/scrape "
           "| exporter RSS (peak), MiB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _n, r in full:
        i = r["info"]
        pair = [a / b for a, b in zip(r["scrape"], r["read_all"])]
        out.append(
            f"| {i['ss_lines']:,} / {i['with_inode']:,} | {r['reps']} ({pct(r['load'])}) | "
            f"{spread(r['scrape'])} | "
            f"{spread(r['scrape_nosampler'])} | {spread(r['read_all'])} | {spread(r['raw'])} | "
            f"{spread(r['ss'])} | {ratio(med(r['scrape']), med(r['read_all']))} "
            f"({min(pair):.2f}-{max(pair):.2f}) | {ratio(med(r['scrape']), med(r['raw']))} | "
            f"{ms(r['cpu']['nosampler'])} | {r['memory']['VmRSS'] / 1024:.1f} "
            f"({r['memory']['VmHWM'] / 1024:.1f}) |")
    return out + ["", "The ratio's range is over the rounds' pairs (each scrape with the "
                  "read_all() right after it).", ""]


def section_b(idle: dict) -> list[str]:
    lat, cpu = idle["lat"], idle["cpu"]
    out = ["### (b) Idle host, one app of 8 workers: against node_exporter", "",
           f"{idle['reps']} interleaved rounds (every target of (b) and (c) scraped once per "
           f"round, {idle['wall']:.0f} s in all; other work on the machine used "
           f"{pct(idle['load'])} of its CPUs meanwhile). *CPU/scrape*: utime+stime from /proc/PID/stat "
           f"over the rounds / rounds (one clock tick, {1000 / CLK_TCK:.0f} ms, is "
           f"{1000 / CLK_TCK / idle['reps']:.3f} ms per scrape here); for the exporter with "
           "the sampler on it includes the sampler's ticks during the rounds.", "",
           "| | scrape ms: median (min-max) | vs node_exporter | CPU/scrape ms | vs node_exporter |",
           "|---|---:|---:|---:|---:|"]
    node = ("w8", "node")
    names = {node: "node_exporter, default collectors",
             ("w8", "default"): "gunicorn-exporter, default flags",
             ("w8", "nosampler"): "gunicorn-exporter, `--sampler.interval 0`"}
    for key, name in names.items():
        if key not in lat:
            continue
        vs = (ratio(med(lat[key]), med(lat[node])), ratio(cpu[key], cpu[node])) \
            if node in lat and key != node else ("", "")
        out.append(f"| {name} | {spread(lat[key])} | {vs[0]} | {ms(cpu[key])} | {vs[1]} |")
    return out + [""]


def slopes(idle: dict) -> dict:
    lat, cpu = idle["lat"], idle["cpu"]
    c = {label: cpu[(label, t)] for label, t in lat if t == "nosampler"}
    m = {label: med(lat[(label, t)]) for label, t in lat if t == "nosampler"}
    w_cpu, w_lat = (c["w64"] - c["w8"]) / 56, (m["w64"] - m["w8"]) / 56
    return {"worker_cpu": w_cpu, "worker_lat": w_lat,
            "master_cpu": (c["m8"] - c["m1"]) / 7 - w_cpu,
            "master_lat": (m["m8"] - m["m1"]) / 7 - w_lat, "cpu": c, "lat": m}


def section_c(idle: dict) -> list[str]:
    s = slopes(idle)
    lat = idle["lat"]
    out = ["### (c) Cost per worker and per master", "",
           "Exporters with `--sampler.interval 0` (the sampler's own cost is (d)), idle "
           "host, same rounds as (b).", "",
           "| namespace | scrape ms: median (min-max) | CPU/scrape ms |", "|---|---:|---:|"]
    names = {"w8": "1 master, 8 workers", "w64": "1 master, 64 workers",
             "m1": "1 master, 1 worker", "m8": "8 masters, 1 worker each"}
    for label, name in names.items():
        out.append(f"| {name} | {spread(lat[(label, 'nosampler')])} | {ms(s['cpu'][label])} |")
    out += ["", f"Per worker: {ms(s['worker_cpu'])} ms CPU, {ms(s['worker_lat'])} ms latency "
            "((64 workers − 8 workers) / 56). Per master, its one worker taken off: "
            f"{ms(s['master_cpu'])} ms CPU, {ms(s['master_lat'])} ms latency "
            "((8 masters − 1 master) / 7 − one worker).", ""]
    return out


def section_d(full: list) -> list[str]:
    rows = [(n, r) for n, r in full if "sampler" in r]
    if not rows:
        return []
    out = ["### (d) The sampler at 10 Hz", "",
           "64 workers, no scrapes during the windows (after the scrapes of (a), which told "
           "the sampler what to watch); the exporter with the sampler on and the one with it "
           "off measured over the same windows (utime+stime from /proc/PID/stat). Share of "
           "one core, median (min-max) of the windows. The last column is the exporter's own "
           "`gunicorn_exporter_sampler_spent_seconds_total` per second (wall time inside "
           "samples).", "",
           "| host sockets | windows (others' CPU) | sampler on (100 ms) | sampler off | difference (the "
           "sampler) | spent_seconds / s |",
           "|---:|---:|---:|---:|---:|---:|"]
    for _n, r in rows:
        d, i = r["sampler"], r["info"]
        diff = [a - b for a, b in zip(d["on"], d["off"])]
        spent = f"{spread(d['spent'], pct)} ({med(d['rate']):.1f} samples/s)" if d["spent"] else "?"
        out.append(f"| {i['ss_lines']:,} | {d['windows']} × {d['seconds']:.0f} s ({pct(d['load'])}) | "
                   f"{spread(d['on'], pct)} | {spread(d['off'], pct)} | {spread(diff, pct)} | "
                   f"{spent} |")
    return out + [""]


def section_e(idle: dict) -> list[str]:
    st = idle["startup"]
    return ["### (e) Start to first good scrape", "",
            f"`bench/startup.py`'s measurement, in the 8-worker namespace, {len(st['ms'])} runs "
            f"(others' CPU {pct(st['load'])}): "
            f"exec of `python -m exporter --no-collector.postgres` to the first 200 /metrics "
            f"whose collectors all succeeded: **{spread([x / 1000 for x in st['ms']])} ms**; "
            f"VmRSS after it {med(st['rss_mib']):.1f} MiB.", ""]


def targets(idle: dict, full: list) -> list[str]:
    out = ["### Against the targets (issues 12 and 21)", "",
           "| target | measured | |", "|---|---:|---|"]
    for n, r in full:
        x = med(r["scrape"]) / med(r["read_all"])
        out.append(f"| full scrape, 64 workers, {n // 1000}k sockets ≤ {T_DUMP}x read_all() "
                   f"| {x:.2f}x | {verdict(x <= T_DUMP)} |")
    lat, cpu = idle["lat"], idle["cpu"]
    node = ("w8", "node")
    if node in lat:
        for key, what in ((("w8", "default"), "default flags"),
                          (("w8", "nosampler"), "sampler off")):
            x = med(lat[key]) / med(lat[node])
            y = cpu[key] / cpu[node]
            out.append(f"| median scrape ≤ {T_NODE_LATENCY}x node_exporter's ({what}) | "
                       f"{x:.2f}x | {verdict(x <= T_NODE_LATENCY)} |")
            out.append(f"| CPU per scrape ≤ node_exporter's ({what}) | {y:.2f}x | "
                       f"{verdict(y <= T_NODE_CPU)} |")
    s = slopes(idle)
    out.append(f"| CPU per worker halved (≤ {T_WORKER * 1000:.3f} ms) | {ms(s['worker_cpu'])} ms | "
               f"{verdict(s['worker_cpu'] <= T_WORKER)} |")
    out.append(f"| CPU per master halved (≤ {ms(T_MASTER)} ms) | {ms(s['master_cpu'])} ms | "
               f"{verdict(s['master_cpu'] <= T_MASTER)} |")
    for n, r in full:
        if "sampler" in r:
            x = med([a - b for a, b in zip(r["sampler"]["on"], r["sampler"]["off"])])
            out.append(f"| sampler, 10 Hz, 64 workers, {n // 1000}k sockets < 1 % of one core"
                       f"{'' if n == 20000 else ' (beyond the target)'} | {pct(x)} | "
                       f"{verdict(x < T_SAMPLER)} |")
    st = med(idle["startup"]["ms"]) / 1000
    out.append(f"| start to first good scrape < {T_STARTUP * 1000:.0f} ms | {ms(st)} ms | "
               f"{verdict(st < T_STARTUP)} |")
    return out + [""]


def render(host: dict, idle: dict, full: list) -> str:
    la, lb = host["load_start"], host["load_end"]
    out = [f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} with `{host['command']}`"
           f"{' (fewer repetitions)' if host['quick'] else ''}: Linux {host['kernel']}, "
           f"{host['cpus']} CPUs, Python {host['python']}, {host['gunicorn']}, "
           f"{host['node'] or 'node_exporter: not installed'}, {host['ss']}. "
           f"Load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} at the start, "
           f"{lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} at the end (the bench's own start-ups "
           f"count too); {host['total']:.0f} s in all. *Others' CPU* in the tables: the "
           "share of the machine's CPUs used during a phase by anything but the bench (host "
           "CPU time from /proc/stat less that of the bench's namespaces and its own). "
           f"Tree: {host['tree']}. "
           "Each scenario ran in its own network and pid namespaces"
           + (f", with a TCP hash table of its own ({host['ehash']:,} buckets, as the host's)."
              if host["ehash"] else " (TCP hash table shared with the host: kernel < 6.1)."),
           ""]
    out += isolation(host, idle, full)
    out += section_a(full)
    out += section_b(idle)
    out += section_c(idle)
    out += section_d(full)
    out += section_e(idle)
    out += targets(idle, full)
    return "\n".join(out)
