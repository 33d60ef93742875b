"""The metrics endpoint in production: TLS, client certificates and basic auth from the
standard web config file, certificate rotation, and bounds under abuse, against the real
exporter process. Certificates are made in the test with openssl; the clients are curl,
Python's ssl module and a real Prometheus.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import signal
import resource
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.exposition import parse_strict, value
from tests.harness.procs import free_port, poll
from tests.harness.servers import running_exporter, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PASSWORD = "correct horse battery staple"
BCRYPT_COST = 4   # the lowest: these tests check the logic, not bcrypt's cost


def openssl(*args: str, cwd: Path) -> None:
    require(shutil.which("openssl") is not None, "openssl is needed to make certificates")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d: Path, ca: str, name: str, *, server: bool) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                   if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "ca", "server", server=True)
    make_cert(d, "ca", "server2", server=True)
    make_cert(d, "ca", "client", server=False)
    make_cert(d, "otherca", "stranger", server=False)
    import bcrypt
    (d / "hash").write_text(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_COST)).decode())
    return d


def web_config(d: Path, *, client_auth: str = "NoClientCert", users: bool = True) -> Path:
    lines = ["tls_server_config:", f"  cert_file: {d / 'tls.crt'}", f"  key_file: {d / 'tls.key'}",
             f"  client_auth_type: {client_auth}"]
    if client_auth != "NoClientCert":
        lines.append(f"  client_ca_file: {d / 'ca.crt'}")
    lines += ["http_server_config:", "  headers:", "    X-Content-Type-Options: nosniff"]
    if users:
        lines += ["basic_auth_users:", f"  prometheus: '{(d / 'hash').read_text()}'"]
    path = d / f"web-{client_auth}-{users}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def use_cert(d: Path, name: str) -> None:
    """Put `name` in place as the served certificate (as a rotation would: new files)."""
    for ext in ("crt", "key"):
        tmp = d / f"tls.{ext}.new"
        shutil.copy(d / f"{name}.{ext}", tmp)
        tmp.replace(d / f"tls.{ext}")


def client_context(d: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(d / f"{cert}.crt"), str(d / f"{cert}.key"))
    return ctx


def get(url: str, *, ctx=None, user: str | None = "prometheus", password: str = PASSWORD,
        headers: dict | None = None, timeout: float = 10):
    req = urllib.request.Request(url, headers=headers or {})
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def served_serial(port: int, d: Path) -> int:
    ctx = client_context(d)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return int(s.getpeercert()["serialNumber"], 16)


def cert_serial(path: Path) -> int:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().split("=")[1], 16)


@contextlib.contextmanager
def tls_exporter(tmp_path, pki, **kw):
    """`python -m exporter` with a web config; ready once /-/healthy answers over TLS."""
    import sys
    use_cert(pki, "server")
    port = free_port()
    log_path = tmp_path / f"exporter-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--web.listen-address",
                                 f"127.0.0.1:{port}", "--web.config.file",
                                 str(web_config(pki, **kw)), "--no-collector.postgres",
                                 "--no-collector.oom"], stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = _ready_tls(port, pki, kw.get("client_auth", "NoClientCert"))

            def up():
                if proc.poll() is not None:
                    raise AssertionError("exporter exited: " + log_path.read_text())
                return ready()
            poll(up, 20, message="exporter did not come up over TLS")
            yield port
        finally:
            stop_process(proc)


def _ready_tls(port, pki, client_auth):
    def ready():
        ctx = client_context(pki, "client" if client_auth != "NoClientCert" else None)
        try:
            return get(f"https://127.0.0.1:{port}/-/healthy", ctx=ctx, timeout=2)[0] == 200
        except OSError:
            return False
    return ready


def test_tls_with_basic_auth(tmp_path, pki):
    with tls_exporter(tmp_path, pki) as port:
        base = f"https://127.0.0.1:{port}"
        ctx = client_context(pki)
        status, headers, body = get(base + "/metrics", ctx=ctx)
        assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
        parse_strict(body.decode())
        assert get(base + "/metrics", ctx=ctx, user=None)[0] == 401
        assert get(base + "/metrics", ctx=ctx, password="wrong")[0] == 401
        assert get(base + "/metrics", ctx=ctx, user="nobody")[0] == 401
        status, headers, _ = get(base + "/metrics", ctx=ctx, user=None)
        assert headers["WWW-Authenticate"].startswith("Basic")
        # plain HTTP to the TLS port: no answer in plain text
        with pytest.raises((OSError, urllib.error.URLError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # curl, an independent client
        if shutil.which("curl"):
            r = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.crt"), "-u",
                                f"prometheus:{PASSWORD}", "-o", "/dev/null", "-w", "%{http_code}",
                                base + "/metrics"], capture_output=True, text=True, timeout=30)
            assert r.stdout == "200", r.stderr


def test_client_certificates(tmp_path, pki):
    with tls_exporter(tmp_path, pki, client_auth="RequireAndVerifyClientCert") as port:
        base = f"https://127.0.0.1:{port}"
        assert get(base + "/metrics", ctx=client_context(pki, "client"))[0] == 200
        for ctx in (client_context(pki), client_context(pki, "stranger")):
            with pytest.raises((ssl.SSLError, OSError, urllib.error.URLError)):
                get(base + "/metrics", ctx=ctx)


def test_certificate_rotation_keeps_prometheus_scraping(tmp_path, pki):
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    require(Path(prometheus).exists(), "prometheus not installed (Debian package 'prometheus')")
    with tls_exporter(tmp_path, pki, client_auth="RequireAndVerifyClientCert") as port:
        assert served_serial(port, pki) == cert_serial(pki / "server.crt")
        prom_port = free_port()
        (tmp_path / "prom").mkdir()
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: gunicorn\n"
            "    scheme: https\n"
            f"    basic_auth: {{username: prometheus, password: '{PASSWORD}'}}\n"
            f"    tls_config: {{ca_file: {pki / 'ca.crt'}, cert_file: {pki / 'client.crt'}, "
            f"key_file: {pki / 'client.key'}}}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'prom'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            api = f"http://127.0.0.1:{prom_port}/api/v1/targets"

            def target_up():
                import json
                with urllib.request.urlopen(api, timeout=2) as r:
                    targets = json.loads(r.read())["data"]["activeTargets"]
                return targets and targets[0]["health"] == "up" and targets[0]
            poll(target_up, 30, message="prometheus never scraped over TLS")
            use_cert(pki, "server2")   # rotated on disk: picked up without a restart
            poll(lambda: served_serial(port, pki) == cert_serial(pki / "server2.crt"), 20,
                 message="the new certificate was not served")
            seen = target_up()["lastScrape"]
            poll(lambda: (t := target_up()) and t["lastScrape"] != seen and t["health"] == "up",
                 20, message="prometheus stopped scraping after the rotation")
        finally:
            stop_process(proc)


def test_sighup_reloads_and_a_broken_file_keeps_the_old_config(tmp_path, pki):
    with tls_exporter(tmp_path, pki) as port:
        base = f"https://127.0.0.1:{port}"
        ctx = client_context(pki)
        cfg = web_config(pki)
        good = cfg.read_text()
        cfg.write_text(good + "unknown_key: 1\n")
        pid = _exporter_pid(port)
        import os
        os.kill(pid, signal.SIGHUP)
        poll(lambda: (s := parse_strict(get(base + "/metrics", ctx=ctx)[2].decode())) and
             value(s, "gunicorn_exporter_web_config_last_reload_successful") == 0 and s,
             10, message="the broken reload was not reported")
        assert get(base + "/metrics", ctx=ctx)[0] == 200   # the old config still in force
        cfg.write_text(good)
        os.kill(pid, signal.SIGHUP)
        poll(lambda: value(parse_strict(get(base + "/metrics", ctx=ctx)[2].decode()),
                           "gunicorn_exporter_web_config_last_reload_successful") == 1, 10,
             message="the good reload was not reported")


def _exporter_pid(port: int) -> int:
    import os
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"exporter" in argv and f"127.0.0.1:{port}".encode() in argv:
                return int(entry)
    raise AssertionError("exporter process not found")


@pytest.mark.parametrize("content,message", [
    ("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
     "cannot load cert_file/key_file"),
    ("basic_auth_users:\n  prometheus: plaintext\n", "is not a bcrypt hash"),
    ("tls_server_config:\n  cert_fiel: x\n", "unknown key(s) in tls_server_config: cert_fiel"),
    ("nonsense: 1\n", "unknown key(s): nonsense"),
    ("[unclosed\n", "is not valid YAML"),
])
def test_bad_web_config_is_one_message_and_exit_2(tmp_path, content, message):
    import sys
    f = tmp_path / "web.yml"
    f.write_text(content)
    r = subprocess.run([sys.executable, "-m", "exporter", "--web.config.file", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


# --- bounds under abuse (plain HTTP: the limits are the same) --------------------------

def test_slowloris_and_idle_floods_do_not_lock_out_a_scrape(tmp_path):
    with running_exporter(tmp_path, "--no-collector.postgres", "--web.max-connections", "16",
                          "--web.header-timeout", "30s") as base:
        port = int(base.rsplit(":", 1)[1])
        held = []
        try:
            for i in range(300):   # slowloris: a request line, and then nothing
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                held.append(s)
            for _ in range(3):
                t = time.monotonic()
                status, _, body = get(base + "/metrics", user=None, timeout=5)
                assert status == 200 and body
                assert time.monotonic() - t < 5
        finally:
            for s in held:
                s.close()


def test_a_connection_flood_over_the_fd_limit_neither_blocks_a_scrape_nor_floods_the_log(
        tmp_path):
    """1,100 half-sent requests against an exporter whose fd limit is 1024 (soft and
    hard, so it cannot raise it): the connection cap keeps it under the limit, a real
    scrape still answers in under 1 s, and the log stays a few lines long."""
    # the client needs 1,100 fds of its own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1400:
        pytest.skip("this test's own fd limit is below 1,400")
    with running_exporter(tmp_path, "--no-collector.postgres", fd_limit=1024) as base:
        port = int(base.rsplit(":", 1)[1])
        log = next(tmp_path.glob("exporter-%d.log" % port))
        held = []
        try:
            for _ in range(1100):   # a request line, and then nothing
                s = socket.socket()
                s.settimeout(1)
                held.append(s)
                with contextlib.suppress(OSError):
                    s.connect(("127.0.0.1", port))
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            for _ in range(5):
                t = time.monotonic()
                status, _, body = get(base + "/metrics", user=None, timeout=5)
                took = time.monotonic() - t
                assert status == 200 and parse_strict(body.decode())
                assert took < 1.0, took
            assert get(base + "/-/healthy", user=None, timeout=5)[0] == 200
        finally:
            for s in held:
                s.close()
        lines = log.read_text().splitlines()
        assert len(lines) < 20, lines[:40]
        assert not any("Too many open files" in line for line in lines), lines[:40]


def test_a_hostile_timeout_header_costs_nobody_else_their_data(tmp_path):
    with running_exporter(tmp_path, "--no-collector.postgres") as base:
        results = []

        def scrape(header):
            status, _, body = get(base + "/metrics", user=None,
                                  headers={"X-Prometheus-Scrape-Timeout-Seconds": header})
            results.append((header, parse_strict(body.decode())))
        for _ in range(5):
            threads = [threading.Thread(target=scrape, args=(h,)) for h in ("0", "10", "0", "10")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        for header, series in results:
            if header == "10":
                assert value(series, "gunicorn_exporter_collector_success", collector="gunicorn") == 1


def test_gzip_when_asked(tmp_path):
    with running_exporter(tmp_path, "--no-collector.postgres") as base:
        status, headers, body = get(base + "/metrics", user=None,
                                    headers={"Accept-Encoding": "gzip"})
        import gzip
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        parse_strict(gzip.decompress(body).decode())
