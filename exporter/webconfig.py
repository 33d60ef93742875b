"""`--web.config.file`: TLS, client certificates, basic auth and response headers, in
the format every Prometheus exporter reads (prometheus/exporter-toolkit's web config):

    tls_server_config:
      cert_file: /etc/gunicorn-exporter/tls.crt
      key_file: /etc/gunicorn-exporter/tls.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), VerifyClientCertIfGiven
      client_ca_file: /etc/gunicorn-exporter/ca.crt
      min_version: TLS12                             # TLS10 .. TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 and below
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2b$12$...                         # bcrypt hashes (htpasswd -nBC 12 "")

Unknown keys, unreadable files, a certificate that does not match its key: a
`WebConfigError` with one readable message (exit 2 at start). The file and the files it
names are re-read on SIGHUP and whenever one of them changes: a new TLS context takes
the next handshake (the listener stays), and a broken new file keeps the old config in
force (`gunicorn_exporter_web_config_last_reload_successful 0`, logged).

Passwords are checked with bcrypt (constant time in the password); an unknown user costs
a bcrypt check too, so response times do not say which users exist. A successful check
is cached by (user, SHA-256 of the password) so scrapes do not pay bcrypt every time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import ssl
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNSUPPORTED_CLIENT_AUTH = {"RequestClientCert", "RequireAnyClientCert"}
# Go's names of the TLS <= 1.2 suites it offers, and OpenSSL's (TLS 1.3 suites are fixed)
CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"}
HTTP_KEYS = {"headers", "http2"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
RESERVED_HEADERS = {"content-length", "content-type", "content-encoding", "connection",
                    "transfer-encoding", "www-authenticate"}
MAX_FILE = 1 << 20
_DUMMY_HASH = b"$2b$10$abcdefghijklmnopqrstuu5fCXwfAq7ZJVl2FhgDaE3ks4rXeMJQ1u"


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
    ssl: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)   # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()                              # what a reload watches

    @property
    def auth(self) -> bool:
        return bool(self.users)


def _read_yaml(path: str):
    import yaml
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise WebConfigError(f"cannot read web config file {path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE:
        raise WebConfigError(f"web config file {path} is larger than {MAX_FILE} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise WebConfigError(f"web config file {path} is not valid YAML: {str(e)[:200]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise WebConfigError(f"web config file {path}: expected a mapping at the top")
    return doc


def _table(doc: dict, key: str, allowed: set[str], where: str) -> dict:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: {key} must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise WebConfigError(f"{where}: unknown key(s) in {key}: {', '.join(map(str, unknown))}")
    return value


def load_web_config(path: str) -> WebConfig:
    """Parse and check the whole file; WebConfigError with one message otherwise."""
    doc = _read_yaml(path)
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise WebConfigError(f"web config file {path}: unknown key(s): {', '.join(map(str, unknown))}")
    base = os.path.dirname(os.path.abspath(path))
    tls = _table(doc, "tls_server_config", TLS_KEYS, path)
    http = _table(doc, "http_server_config", HTTP_KEYS, path)
    cfg = WebConfig(files=(path,))
    if tls:
        cfg.ssl, files = _ssl_context(tls, base, path)
        cfg.files += files
    if http.get("http2"):
        log.info("web config: http2 is not served; HTTP/1.1 it is")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"{path}: http_server_config.headers must be a mapping")
    for name, value in headers.items():
        name, value = str(name), str(value)
        if not name or any(c in name for c in ":\r\n ") or any(c in value for c in "\r\n"):
            raise WebConfigError(f"{path}: header {name[:60]!r} is not a valid header")
        if name.lower() in RESERVED_HEADERS:
            raise WebConfigError(f"{path}: header {name!r} is set by the exporter itself")
        cfg.headers[name] = value
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users must be a mapping of user: bcrypt hash")
    for user, hashed in users.items():
        hashed = str(hashed).encode()
        if not hashed.startswith((b"$2a$", b"$2b$", b"$2y$")) or len(hashed) != 60:
            raise WebConfigError(f"{path}: the password of {str(user)[:60]!r} is not a bcrypt hash")
        if ":" in str(user):
            raise WebConfigError(f"{path}: user {str(user)[:60]!r} contains ':'")
        cfg.users[str(user)] = hashed
    return cfg


def _path(value, base: str) -> str:
    value = str(value)
    return value if os.path.isabs(value) else os.path.join(base, value)


def _ssl_context(tls: dict, base: str, where: str) -> tuple[ssl.SSLContext, tuple[str, ...]]:
    if not tls.get("cert_file") or not tls.get("key_file"):
        raise WebConfigError(f"{where}: tls_server_config needs cert_file and key_file")
    cert, key = _path(tls["cert_file"], base), _path(tls["key_file"], base)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS["TLS12"]
    files = [cert, key]
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(f"{where}: cannot load cert_file/key_file: {e}") from None
    for field_, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if tls.get(field_) is not None:
            version = TLS_VERSIONS.get(str(tls[field_]))
            if version is None:
                raise WebConfigError(f"{where}: {field_} must be one of {', '.join(TLS_VERSIONS)}")
            setattr(ctx, attr, version)
    mode = str(tls.get("client_auth_type") or "NoClientCert")
    if mode in UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(f"{where}: client_auth_type {mode} cannot be done without verifying "
                             "the certificate here; use VerifyClientCertIfGiven or "
                             "RequireAndVerifyClientCert with client_ca_file")
    if mode not in CLIENT_AUTH:
        raise WebConfigError(f"{where}: client_auth_type must be one of {', '.join(CLIENT_AUTH)}")
    ctx.verify_mode = CLIENT_AUTH[mode]
    if tls.get("client_ca_file"):
        ca = _path(tls["client_ca_file"], base)
        files.append(ca)
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"{where}: cannot load client_ca_file: {e}") from None
    elif ctx.verify_mode != ssl.CERT_NONE:
        raise WebConfigError(f"{where}: client_auth_type {mode} needs client_ca_file")
    suites = tls.get("cipher_suites")
    if suites:
        names = []
        for s in suites:
            if str(s) not in CIPHERS:
                raise WebConfigError(f"{where}: cipher suite {str(s)[:60]!r} is unknown or cannot "
                                     "be chosen here (TLS 1.3 suites are always on)")
            names.append(CIPHERS[str(s)])
        try:
            ctx.set_ciphers(":".join(names))
        except ssl.SSLError as e:
            raise WebConfigError(f"{where}: cipher_suites: {e}") from None
    if tls.get("prefer_server_cipher_suites", True):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.get("curve_preferences"):
        log.info("web config: curve_preferences are left to OpenSSL's defaults")
    return ctx, tuple(files)


class WebConfigHolder:
    """The config in force; re-read on SIGHUP or when a file it names changes."""

    def __init__(self, path: str | None):
        self.path = path
        self.config = load_web_config(path) if path else WebConfig()
        self.last_reload_ok = True
        self._stamps = self._stat()
        self._ok: dict[str, bytes] = {}    # user -> sha256 of a password bcrypt accepted

    def _stat(self) -> dict[str, tuple]:
        out = {}
        for f in self.config.files:
            try:
                st = os.stat(f)
                out[f] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                out[f] = None
        return out

    def changed(self) -> bool:
        return self.path is not None and self._stat() != self._stamps

    def reload(self) -> bool:
        if not self.path:
            return True
        try:
            new = load_web_config(self.path)
        except WebConfigError as e:
            self.last_reload_ok = False
            log.error("web config not reloaded, the previous one stays in force: %s", e)
            return False
        if bool(new.ssl) != bool(self.config.ssl):
            self.last_reload_ok = False
            log.error("web config not reloaded: turning TLS on or off needs a restart")
            return False
        self.config = new
        self._stamps = self._stat()
        self._ok.clear()
        self.last_reload_ok = True
        log.info("web config reloaded")
        return True

    def server_context(self) -> ssl.SSLContext | None:
        """The context the listener is created with: every handshake switches to the
        context in force (SNI callback), so certificates rotate without a restart."""
        ctx = self.config.ssl
        if ctx is None:
            return None

        def current(sslobj, _server_name, _ctx):
            sslobj.context = self.config.ssl
            return None
        ctx.sni_callback = current
        return ctx

    def authorized(self, header: str) -> bool:
        users = self.config.users
        if not users:
            return True
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        digest = hashlib.sha256(f"{user}:{password}".encode()).digest()
        known = self._ok.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        import bcrypt
        hashed = users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        if ok:
            if len(self._ok) > 1024:
                self._ok.clear()
            self._ok[user] = digest
        return ok
