"""--web.config.file: the exporter-toolkit format read on literal files (pure), and the
same files run through node_exporter (Debian's prometheus-node-exporter, which reads
them with exporter-toolkit itself) and through this exporter: for the keys that release
knows, both accept the same files and refuse the same broken ones."""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from exporter.webconfig import WebConfigError, load_web_config, parse_go_duration
from exporter.webtls import normalise_san
from tests.conftest import require
from tests.harness.procs import free_port, poll
from tests.harness.servers import stop_process

HASH = "$2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze"   # toolkit's docs


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.test_web import make_ca, make_cert
    d = tmp_path_factory.mktemp("wcpki")
    make_ca(d, "ca")
    make_cert(d, "ca", "server", server=True)
    make_cert(d, "ca", "client", server=False)
    (d / "garbage.pem").write_text("not a certificate\n")
    return d


def load(d: Path, text: str):
    f = d / "web.yml"
    f.write_text(text)
    return load_web_config(str(f))


def refused(d: Path, text: str) -> str:
    with pytest.raises(WebConfigError) as e:
        load(d, text)
    return str(e.value)


# --- the format, on literal files ------------------------------------------------------

def test_go_durations():
    assert parse_go_duration("1s") == 1 and parse_go_duration("500ms") == 0.5
    assert parse_go_duration("1m30s") == 90 and parse_go_duration("1h2m3.5s") == 3723.5
    assert parse_go_duration("0") == 0 and parse_go_duration("-1s") == -1
    for bad in ("", "1", "s", "1x", "1.s1", "soon"):
        with pytest.raises(WebConfigError):
            parse_go_duration(bad)


def test_empty_and_plain_files(tmp_path):
    assert load(tmp_path, "").ssl is None and not load(tmp_path, "").auth
    c = load(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n  bob: '{HASH}'\n"
                       "http_server_config:\n  http2: false\n  headers:\n"
                       "    X-Frame-Options: deny\n    Content-Security-Policy: \"\"\n")
    assert set(c.users) == {"alice", "bob"} and c.headers == {"X-Frame-Options": "deny"}
    # TLS keys without a certificate, key, CA or client auth type: plain HTTP (as the toolkit)
    c = load(tmp_path, "tls_server_config:\n  min_version: TLS13\n")
    assert c.ssl is None and c.warnings


@pytest.mark.parametrize("text,message", [
    ("a: 1\n", "unknown key(s): a"),
    ("tls_server_config:\n  cert_fiel: x\n", "unknown key(s) in tls_server_config: cert_fiel"),
    ("rate_limit:\n  every: 1s\n", "unknown key(s) in rate_limit: every"),
    ("basic_auth_users: {}\nbasic_auth_users: {}\n", "appears twice"),
    ("basic_auth_users:\n  a: x\n", "is not a bcrypt hash"),
    ("basic_auth_users: [a]\n", "must be a mapping"),
    ("http_server_config:\n  http2: 'yes'\n", "http2 must be true or false"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "can not be configured"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "must be one of deny"),
    ("http_server_config:\n  headers:\n    x-frame-options: deny\n", "can not be configured"),
    ("rate_limit:\n  interval: soon\n", "is not a duration"),
    ("rate_limit:\n  interval: 1s\n  burst: -1\n", "burst must be 0 or more"),
    ("rate_limit:\n  interval: 1s\n  burst: x\n", "burst must be a whole number"),
    ("a: &a [*a]\n", "recursive alias"),
    ("[1]\n", "must be a mapping"),
    ("{{\n", "is not valid YAML"),
])
def test_broken_files_are_one_message(tmp_path, text, message):
    assert message in refused(tmp_path, text)


def test_rate_limit(tmp_path):
    assert load(tmp_path, "rate_limit:\n  interval: 1m\n  burst: 3\n").rate_limit == (60.0, 3)
    assert load(tmp_path, "rate_limit:\n  interval: 1000000000\n  burst: 2\n").rate_limit == (1.0, 2)
    assert load(tmp_path, "rate_limit:\n  interval: 0\n  burst: 9\n").rate_limit is None
    assert load(tmp_path, "rate_limit:\n  interval: 1s\n").warnings      # burst 0: all 429


@pytest.mark.slow
def test_tls_keys(pki):
    base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    c = load(pki, base)
    assert c.ssl.verify_mode == ssl.CERT_NONE and c.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    c = load(pki, base + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                         "  min_version: TLS13\n  max_version: TLS13\n  client_allowed_sans: [a, '::01']\n")
    assert c.ssl.verify_mode == ssl.CERT_REQUIRED and c.allowed_sans == {"a", "::1"}
    assert c.ssl.minimum_version == ssl.TLSVersion.TLSv1_3
    assert load(pki, base + "  client_auth_type: VerifyClientCertIfGiven\n").ssl.verify_mode == \
        ssl.CERT_OPTIONAL            # without a CA: the system's roots, as Go
    assert load(pki, base + "  client_auth_type: RequestClientCert\n").ssl.verify_mode == ssl.CERT_NONE
    # TLS 1.3 suites only: nothing left for TLS 1.2, as in Go
    c = load(pki, base + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")
    assert c.ssl.minimum_version == ssl.TLSVersion.TLSv1_3
    assert load(pki, base + "  curve_preferences: [CurveP384]\n").ssl is not None
    ca = (pki / "ca.crt").read_text().replace("\n", "\n    ")
    cert = (pki / "server.crt").read_text().replace("\n", "\n    ")
    key = (pki / "server.key").read_text().replace("\n", "\n    ")
    c = load(pki, f"tls_server_config:\n  cert: |\n    {cert}\n  key: |\n    {key}\n"
                  f"  client_ca: |\n    {ca}\n  client_auth_type: RequireAndVerifyClientCert\n")
    assert c.ssl.verify_mode == ssl.CERT_REQUIRED and len(c.ssl.get_ca_certs()) == 1
    assert c.files == (str(pki / "web.yml"),)
    # accepted as exporter-toolkit accepts them, with a warning: every handshake fails
    assert load(pki, base + "  min_version: TLS13\n  max_version: TLS12\n").warnings
    assert load(pki, base + "  client_auth_type: RequireAndVerifyClientCert\n"
                            "  client_ca_file: garbage.pem\n").warnings


@pytest.mark.parametrize("extra,message", [
    ("  client_auth_type: RequireAnyClientCert\n", "client_auth_type RequireAnyClientCert"),
    ("  client_auth_type: RequireClientCert\n", "cannot require a client certificate"),
    ("  client_auth_type: Sometimes\n", "client_auth_type must be one of"),
    ("  client_ca_file: ca.crt\n", "without a client auth policy"),
    ("  client_auth_type: RequestClientCert\n  client_allowed_sans: [a]\n", "client_allowed_sans"),
    ("  curve_preferences: [X25519, CurveP256]\n", "curve_preferences"),
    ("  curve_preferences: [P-256]\n", "unknown curve"),
    ("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "unknown cipher"),
    ("  min_version: SSL3\n", "min_version must be one of"),
    ("  prefer_server_cipher_suites: maybe\n", "must be true or false"),
    ("  cert: inline\n", "give cert or cert_file, not both"),
])
@pytest.mark.slow
def test_tls_values_python_cannot_honour_or_that_are_wrong(pki, extra, message):
    assert message in refused(pki, "tls_server_config:\n  cert_file: server.crt\n"
                                    "  key_file: server.key\n" + extra)


@pytest.mark.slow
def test_tls_files_must_be_regular_and_match(pki):
    assert "cannot load cert_file/key_file" in refused(
        pki, "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: server.key\n")
    assert "is not a regular file" in refused(
        pki, "tls_server_config:\n  cert_file: /dev/zero\n  key_file: server.key\n")
    assert "cannot load cert_file/key_file" in refused(
        pki, "tls_server_config:\n  cert_file: ca.crt\n  key_file: server.key\n")  # not its key
    assert "key_file (or key) is missing" in refused(pki, "tls_server_config:\n  cert_file: server.crt\n")


def test_sans_are_compared_as_go_prints_them():
    assert normalise_san("2001:DB8:0:0:0:0:0:1") == "2001:db8::1"
    assert normalise_san("127.0.0.1") == "127.0.0.1" and normalise_san("a.example") == "a.example"


# --- the same files through node_exporter ---------------------------------------------

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def _node_exporter_verdict(config: Path, tls: bool, tmp: Path) -> bool:
    """True if node_exporter serves with this file, False if it exits refusing it."""
    port = free_port()
    log = tmp / f"node-{port}.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                              f"--web.config.file={config}", "--collector.disable-defaults"],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        return _verdict(p, port, tls, config.parent)
    finally:
        stop_process(p)


def _exporter_verdict(config: Path, tls: bool, tmp: Path) -> bool:
    port = free_port()
    with open(tmp / f"exporter-{port}.log", "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "exporter", "--web.listen-address",
                              f"127.0.0.1:{port}", "--web.config.file", str(config),
                              "--no-collector.postgres", "--no-collector.gunicorn"],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        return _verdict(p, port, tls, config.parent)
    finally:
        stop_process(p)


def _verdict(p: subprocess.Popen, port: int, tls: bool, pki: Path) -> bool:
    contexts = [None]
    if tls:     # a client with a certificate of the test CA, and one without any
        contexts = [ssl.create_default_context(), ssl.create_default_context()]
        for ctx in contexts:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        contexts[0].load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))

    def settled():
        if p.poll() is not None:
            return "refused"
        for ctx in contexts:
            try:
                urllib.request.urlopen(f"{'https' if tls else 'http'}://127.0.0.1:{port}/metrics",
                                       timeout=2, context=ctx).read()
                return "served"
            except urllib.error.HTTPError:
                return "served"            # 401 without credentials: it is serving
            except (OSError, ssl.SSLError):
                continue
        return None
    verdict = poll(settled, 20, message="neither served nor exited")
    if verdict == "refused":
        assert p.returncode != 0
    return verdict == "served"


def parity_files(pki: Path) -> list[tuple[str, str, bool, bool]]:
    """(name, file, TLS?, accepted?) in the format node_exporter 1.5's toolkit knows."""
    tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    return [
        ("empty", "", False, True),
        ("basic auth", f"basic_auth_users:\n  alice: {HASH}\n", False, True),
        ("headers", "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
                    "    Strict-Transport-Security: max-age=1\n", False, True),
        ("http2 off", "http_server_config:\n  http2: false\n", False, True),
        ("tls", tls, True, True),
        ("tls 1.3 only", tls + "  min_version: TLS13\n", True, True),
        ("tls ciphers", tls + "  max_version: TLS12\n  cipher_suites:\n"
                              "    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n"
                              "    - TLS_RSA_WITH_AES_256_CBC_SHA\n"
                              "  prefer_server_cipher_suites: false\n", True, True),
        ("one curve", tls + "  curve_preferences: [X25519]\n", True, True),
        ("verified client certs", tls + "  client_auth_type: RequireAndVerifyClientCert\n"
                                        "  client_ca_file: ca.crt\n", True, True),
        ("client certs if given", tls + "  client_auth_type: VerifyClientCertIfGiven\n", True, True),
        ("requested client certs", tls + "  client_auth_type: RequestClientCert\n", True, True),
        ("tls keys without a certificate", "tls_server_config:\n  min_version: TLS13\n", False, True),
        ("unknown key", "nonsense: 1\n", False, False),
        ("misspelt tls key", "tls_server_config:\n  cert_fiel: x\n", False, False),
        ("duplicate key", "basic_auth_users: {}\nbasic_auth_users: {}\n", False, False),
        ("password not a hash", "basic_auth_users:\n  alice: secret\n", False, False),
        ("header not allowed", "http_server_config:\n  headers:\n    X-Custom: 1\n", False, False),
        ("header value not allowed", "http_server_config:\n  headers:\n"
                                     "    X-Content-Type-Options: sniff\n", False, False),
        ("missing key file", "tls_server_config:\n  cert_file: server.crt\n", False, False),
        ("missing cert file", "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
         False, False),
        ("cert that is not the key's", "tls_server_config:\n  cert_file: ca.crt\n"
                                        "  key_file: server.key\n", False, False),
        ("unknown cipher", tls + "  cipher_suites: [TLS_FOO]\n", False, False),
        ("unknown curve", tls + "  curve_preferences: [P-256]\n", False, False),
        ("unknown version", tls + "  min_version: TLS14\n", False, False),
        ("unknown client auth", tls + "  client_auth_type: Maybe\n", False, False),
        ("CA without client auth", tls + "  client_ca_file: ca.crt\n", False, False),
        ("not YAML", "{{\n", False, False),
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_node_exporter_and_this_exporter_accept_and_refuse_the_same_files(pki, tmp_path):
    require(Path(NODE_EXPORTER).exists(),
            "node_exporter not installed (Debian package 'prometheus-node-exporter')")
    differ = []
    for name, text, tls, accepted in parity_files(pki):
        config = pki / f"parity-{name.replace(' ', '-')}.yml"
        config.write_text(text)
        theirs = _node_exporter_verdict(config, tls, tmp_path)
        ours = _exporter_verdict(config, tls, tmp_path)
        if not theirs == ours == accepted:
            differ.append(f"{name}: node_exporter {theirs}, exporter {ours}, expected {accepted}")
    assert not differ, differ


# --- basic auth and the rate limit (exporter/webauth.py) on literal values -------------

def test_basic_auth_header_parsing():
    from exporter.webauth import parse_basic
    assert parse_basic("Basic YWxpY2U6cGE6c3M=") == ("alice", "pa:ss")
    assert parse_basic("basic  YWxpY2U6") == ("alice", "")
    for bad in ("", "Bearer x", "Basic !!!", "Basic YWxpY2U=", "Basic " + "A" * 5000):
        assert parse_basic(bad) is None, bad


def test_verified_credentials_are_remembered_failures_are_not():
    import asyncio
    import base64

    import bcrypt
    from exporter.webauth import BasicAuth
    users = {"alice": bcrypt.hashpw(b"secret", bcrypt.gensalt(4))}

    def header(user, pw):
        return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    async def go():
        auth = BasicAuth()
        try:
            assert await auth.check(users, header("alice", "secret")) is True
            assert await auth.check(users, header("alice", "secret")) is True
            assert auth.checks == 1                       # the second from the cache
            for _ in range(2):
                assert await auth.check(users, header("alice", "wrong")) is False
                assert await auth.check(users, header("bob", "secret")) is False
            assert auth.checks == 5                       # every failure checked again
            assert await auth.check(users, "") is False
            assert await auth.check({}, "") is True       # no users: no auth
        finally:
            auth.close()
    asyncio.run(go())


def test_rate_limit_is_a_token_bucket_that_starts_full():
    from exporter.webauth import RateLimit
    r = RateLimit(3600.0, 3)
    assert [r.allow() for _ in range(5)] == [True, True, True, False, False]
    assert not RateLimit(3600.0, 0).allow()
