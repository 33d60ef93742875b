"""TLS settings of --web.config.file as clients see them, on the real exporter: a reload
applies every TLS setting to the next connection or is refused and says so; client
certificates without an allowed SAN are refused; a burst over the rate limit gets 429;
inline certificates, cipher suites and curves do what the file says. The clients are
Python's ssl module and curl; certificates are made with openssl."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.exposition import parse_strict, value
from tests.harness.procs import poll
from tests.harness.servers import running_exporter
from tests.test_web import make_ca, make_cert, openssl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("tlspki")
    make_ca(d, "ca")
    make_cert(d, "ca", "server", server=True)
    for name, san in (("alice", "DNS:alice.example"), ("bob", "DNS:bob.example"),
                      ("ip", "IP:2001:db8::1")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out",
                f"{name}.crt", cwd=d)
    return d


def client(d: Path, cert: str | None = None, *, max_version=None,
           curve: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(d / f"{cert}.crt"), str(d / f"{cert}.key"))
    if max_version:
        ctx.maximum_version = max_version
    if curve:
        ctx.set_ecdh_curve(curve)
    return ctx


def status(base: str, ctx: ssl.SSLContext, path: str = "/-/healthy"):
    """The HTTP status, or the name of the error when TLS or the connection failed."""
    try:
        with urllib.request.urlopen(base + path, context=ctx, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ssl.SSLError) as e:
        return type(getattr(e, "reason", e)).__name__


def tls_exporter(tmp_path, d: Path, text: str, probe: ssl.SSLContext):
    (d / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n"
                               "  key_file: server.key\n" + text)
    return running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.gunicorn",
                            "--web.config.file", str(d / "web.yml"), scheme="https",
                            ready=lambda base: status(base, probe) == 200)


def listening(base: str) -> bool:
    """The port takes connections (no request is sent: none of the burst is used up)."""
    try:
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=2).close()
        return True
    except OSError:
        return False


def reload_ok(base: str, ctx) -> float | None:
    with urllib.request.urlopen(base + "/metrics", context=ctx, timeout=5) as r:
        return value(parse_strict(r.read().decode()),
                     "gunicorn_exporter_web_config_last_reload_successful")


def test_a_reload_applies_every_tls_setting_or_is_refused_and_says_so(tmp_path, pki):
    tls12 = ssl.TLSVersion.TLSv1_2
    with tls_exporter(tmp_path, pki, "", client(pki)) as base:
        assert status(base, client(pki)) == 200
        assert status(base, client(pki, max_version=tls12)) == 200
        # client certificates required, TLS 1.3 only, from the next connection on
        (pki / "web.yml").write_text(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
            "  min_version: TLS13\n")
        os.kill(base.pid, signal.SIGHUP)
        poll(lambda: status(base, client(pki)) != 200, 10,
             message="a client without a certificate still got in after the reload")
        assert status(base, client(pki, "alice", max_version=tls12)) != 200
        assert status(base, client(pki, "alice")) == 200
        assert reload_ok(base, client(pki, "alice")) == 1
        # a file Python's ssl cannot honour: refused, said, the previous one stays
        (pki / "web.yml").write_text(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            "  curve_preferences: [X25519, CurveP256]\n")
        os.kill(base.pid, signal.SIGHUP)
        poll(lambda: reload_ok(base, client(pki, "alice")) == 0, 10,
             message="the refused reload was not reported")
        assert status(base, client(pki)) != 200 and status(base, client(pki, "alice")) == 200
        log = next(tmp_path.glob("exporter-*.log")).read_text()
        assert "not reloaded" in log and "curve_preferences" in log, log


def test_client_allowed_sans(tmp_path, pki):
    text = ("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
            "  client_allowed_sans: [alice.example, '2001:db8:0::1']\n")
    with tls_exporter(tmp_path, pki, text, client(pki, "alice")) as base:
        assert status(base, client(pki, "alice")) == 200
        assert status(base, client(pki, "ip")) == 200          # an IP SAN, as Go prints it
        assert status(base, client(pki, "bob")) != 200         # verified, but not allowed
        assert status(base, client(pki)) != 200
        with urllib.request.urlopen(base + "/metrics", context=client(pki, "alice"),
                                    timeout=5) as r:
            seen = parse_strict(r.read().decode())
        assert value(seen, "gunicorn_exporter_web_refused_total", reason="client_certificate") >= 1


def test_a_burst_over_the_rate_limit_gets_429(tmp_path, pki):
    (pki / "plain.yml").write_text("rate_limit:\n  interval: 1m\n  burst: 3\n"
                                   "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.gunicorn",
                          "--web.config.file", str(pki / "plain.yml"),
                          ready=listening) as base:
        codes, frames = [], []
        for _ in range(6):
            try:
                with urllib.request.urlopen(base + "/-/healthy", timeout=5) as r:
                    codes.append(r.status)
                    frames.append(r.headers.get("X-Frame-Options"))
            except urllib.error.HTTPError as e:
                codes.append(e.code)
            except OSError:
                codes.append(None)      # before it listened
        served = [c for c in codes if c is not None]
        assert served[:3] == [200, 200, 200] and set(served[3:]) == {429}, codes
        assert frames[0] == "deny"


def test_inline_certificates_ciphers_and_curves(tmp_path, pki):
    indent = "\n    "
    cert = (pki / "server.crt").read_text().strip().replace("\n", indent)
    key = (pki / "server.key").read_text().strip().replace("\n", indent)
    ca = (pki / "ca.crt").read_text().strip().replace("\n", indent)
    (pki / "inline.yml").write_text(
        f"tls_server_config:\n  cert: |{indent}{cert}\n  key: |{indent}{key}\n"
        f"  client_ca: |{indent}{ca}\n  client_auth_type: VerifyClientCertIfGiven\n"
        "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n"
        "  curve_preferences: [CurveP384]\n  prefer_server_cipher_suites: true\n"
        "http_server_config:\n  http2: true\n")
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.gunicorn",
                          "--web.config.file", str(pki / "inline.yml"), scheme="https",
                          ready=lambda base: status(base, client(pki, curve="secp384r1")) == 200
                          ) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client(pki, "alice", curve="secp384r1").wrap_socket(
                    raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.2"
            assert s.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
        assert status(base, client(pki, curve="X25519")) != 200      # not the server's curve
        # an independent client, without a certificate of its own, on the server's curve
        require(shutil.which("curl") is not None, "curl not installed (Debian package 'curl')")
        r = subprocess.run(["curl", "-sS", "--curves", "secp384r1", "--cacert",
                            str(pki / "ca.crt"), "-o", "/dev/null", "-w", "%{http_code}",
                            base + "/-/healthy"], capture_output=True, text=True, timeout=30)
        assert r.stdout == "200", r.stderr


def test_a_stalled_handshake_meets_the_head_deadline(tmp_path, pki):
    """A client that connects to the TLS port and sends nothing is disconnected after
    --web.header-timeout (the client's clock), and counted."""
    import time
    (pki / "deadline.yml").write_text("tls_server_config:\n  cert_file: server.crt\n"
                                      "  key_file: server.key\n")
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.gunicorn",
                          "--web.header-timeout", "2s", "--web.config.file",
                          str(pki / "deadline.yml"), scheme="https",
                          ready=lambda base: status(base, client(pki)) == 200) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            start = time.monotonic()
            assert s.recv(1) == b""                # closed by the exporter, not by us
            took = time.monotonic() - start
        assert 1.9 <= took < 5, took
        with urllib.request.urlopen(base + "/metrics", context=client(pki), timeout=5) as r:
            seen = parse_strict(r.read().decode())
        assert value(seen, "gunicorn_exporter_web_refused_total", reason="header_timeout") >= 1
