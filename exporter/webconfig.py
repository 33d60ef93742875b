"""`--web.config.file`: the web configuration file every Prometheus exporter reads
(prometheus/exporter-toolkit's format, docs/configuration.md#tls-and-basic-auth), all of
it: `tls_server_config` (certificate and key as files or inline, the five
`client_auth_type`s, client CA as a file or inline, `client_allowed_sans`, TLS versions,
cipher suites, curves, server cipher preference), `http_server_config` (`headers`;
`http2`, accepted and ignored: HTTP/1.1 is served), `basic_auth_users` and `rate_limit`.

The file is read the way exporter-toolkit reads it (Go's yaml.v2 in strict mode): an
unknown key, a key given twice or a value of the wrong kind is refused, a scalar where a
string is wanted is taken as its text, relative paths are relative to the file. A file
node_exporter accepts is accepted here with the same meaning; where Python's `ssl`
cannot do what a value asks (`RequireAnyClientCert`: a client certificate that is
required but not verified; more than one curve), `WebConfigError` names the key, and
the exporter exits 2 at start. Values exporter-toolkit accepts but that make every
handshake fail (a CA file without a certificate, `min_version` above `max_version`) are
accepted too, with a warning in the log.

Every file is opened only if it is a regular file and read up to 1 MiB. The TLS context
is built in exporter/webtls.py; bcrypt and the rate limit are exporter/webauth.py.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from ssl import SSLContext

from exporter import webtls
from exporter.webtls import describe_tls

log = logging.getLogger(__name__)

MAX_FILE = 1 << 20
MAX_NODES = 100_000         # YAML nodes visited, aliases included (no billion laughs)
MAX_DEPTH = 16              # the format nests 3 deep; a recursive alias ends here
# The only headers exporter-toolkit lets a file set, and the values it allows (None: any)
HEADERS = {"Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
           "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None,
           "Content-Security-Policy": None}
KEYS = {
    "": {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"},
    "tls_server_config": {"cert", "key", "client_ca", "cert_file", "key_file",
                          "client_auth_type", "client_ca_file", "client_allowed_sans",
                          "min_version", "max_version", "cipher_suites",
                          "prefer_server_cipher_suites", "curve_preferences"},
    "http_server_config": {"http2", "headers"},
    "rate_limit": {"interval", "burst"},
}
TLS_ON = ("cert_file", "cert", "key_file", "key", "client_ca_file", "client_ca",
          "client_auth_type")     # any of these set: TLS (as exporter-toolkit decides)
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}


class WebConfigError(ValueError):
    pass


@dataclass(frozen=True)
class WebConfig:
    ssl: SSLContext | None = None                          # None: plain HTTP
    allowed_sans: frozenset[str] | None = None            # None: any verified client
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit: tuple[float, int] | None = None           # (seconds per request, burst)
    files: tuple[str, ...] = ()                           # what a reload watches
    warnings: tuple[str, ...] = ()

    @property
    def auth(self) -> bool:
        return bool(self.users)


# --- reading -------------------------------------------------------------------------

def read_regular(path: str, what: str) -> bytes:
    """A regular file's bytes (at most MAX_FILE); anything else is a WebConfigError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise WebConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WebConfigError(f"{what} {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise WebConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise WebConfigError(f"{what} {path} is larger than {MAX_FILE} bytes")
    return data


def parse_document(data: bytes, where: str):
    """YAML -> dicts, lists and scalar nodes, refusing what yaml.v2's strict mode refuses
    (a key twice, a non-scalar key); at most MAX_NODES nodes, MAX_DEPTH deep."""
    import yaml
    try:
        root = yaml.compose(data, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise WebConfigError(f"{where} is not valid YAML: {str(e)[:200]}") from None
    budget = [MAX_NODES]

    def convert(node, depth=0):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise WebConfigError(f"{where}: more than {MAX_NODES} YAML nodes or nested "
                                 f"deeper than {MAX_DEPTH} (a recursive alias?)")
        if isinstance(node, yaml.MappingNode):
            out = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise WebConfigError(f"{where}: a key that is not a plain value")
                if k.value in out:
                    raise WebConfigError(f"{where}: key {k.value[:60]!r} appears twice "
                                         f"(line {k.start_mark.line + 1})")
                out[k.value] = convert(v, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [convert(v, depth + 1) for v in node.value]
        return node
    return {} if root is None else convert(root)


def _null(v) -> bool:
    return v is None or (not isinstance(v, (dict, list)) and v.tag.endswith(":null"))


def _text(v, key: str) -> str | None:
    """A string setting: any scalar, as written (yaml.v2 does the same)."""
    if _null(v):
        return None
    if isinstance(v, (dict, list)):
        raise WebConfigError(f"{key} must be a single value")
    return v.value


def _typed(v, key: str, kind: str, what: str):
    import yaml
    if _null(v):
        return None
    if isinstance(v, (dict, list)) or not v.tag.endswith(":" + kind):
        raise WebConfigError(f"{key} must be {what}")
    return yaml.constructor.SafeConstructor().construct_object(v)


def _texts(v, key: str) -> list[str] | None:
    if _null(v):
        return None
    if not isinstance(v, list):
        raise WebConfigError(f"{key} must be a list")
    return [_text(x, key) or "" for x in v]


def _mapping(value, key: str, what: str = "a mapping") -> dict:
    """A mapping setting: {} when absent or null."""
    if _null(value):
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{key} must be {what}")
    return value


def _table(value, key: str) -> dict:
    """A mapping with only the keys the format has (KEYS[key]; "" is the file itself)."""
    value = _mapping(value, key or "the file")
    unknown = sorted(set(value) - KEYS[key])
    if unknown:
        raise WebConfigError(f"unknown key(s){' in ' + key if key else ''}: "
                             f"{', '.join(u[:60] for u in unknown)}")
    return value


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration ('1s', '1m30s', '500ms', '-1.5h') -> seconds."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(s):
        m = _GO_DURATION.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise WebConfigError(f"{text!r} is not a duration (examples: 1s, 500ms, 1m30s)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise WebConfigError(f"{text!r} is not a duration (examples: 1s, 500ms, 1m30s)")
    return sign * total


# --- the file --------------------------------------------------------------------------

def load_web_config(path: str) -> WebConfig:
    """Parse and check the whole file; WebConfigError with one message naming the file
    and the key otherwise."""
    try:
        return _load(path)
    except WebConfigError as e:
        if path in str(e):
            raise
        raise WebConfigError(f"web config file {path}: {e}") from None


def _load(path: str) -> WebConfig:
    doc = parse_document(read_regular(path, "web config file"), f"web config file {path}")
    top = _table(doc, "")
    tls = _table(top.get("tls_server_config"), "tls_server_config")
    http = _table(top.get("http_server_config"), "http_server_config")
    rate = _table(top.get("rate_limit"), "rate_limit")
    warnings: list[str] = []
    files = [path]
    base = os.path.dirname(os.path.abspath(path))
    context, sans = None, None
    if any(_text(tls.get(k), f"tls_server_config.{k}") for k in TLS_ON):
        context, sans = _tls(tls, base, files, warnings)
    elif tls:
        warnings.append("tls_server_config has no certificate, key, CA or client_auth_type: "
                        "plain HTTP is served (as exporter-toolkit does)")
    _typed(http.get("http2"), "http_server_config.http2", "bool", "true or false")
    return WebConfig(ssl=context, allowed_sans=sans, users=_users(top.get("basic_auth_users")),
                     headers=_headers(http.get("headers")),
                     rate_limit=_rate_limit(rate, warnings), files=tuple(files),
                     warnings=tuple(warnings))


def _headers(value) -> dict[str, str]:
    out = {}
    for name, v in _mapping(value, "http_server_config.headers").items():
        text = _text(v, f"http_server_config.headers.{name}") or ""
        if name not in HEADERS:
            raise WebConfigError(f"http_server_config.headers: {name[:60]!r} can not "
                                 f"be configured (one of {', '.join(HEADERS)})")
        allowed = HEADERS[name]
        if allowed is not None and text not in allowed:
            raise WebConfigError(f"http_server_config.headers.{name} must be one of "
                                 f"{', '.join(allowed)}, not {text[:60]!r}")
        if any(c in text for c in "\r\n\0"):
            raise WebConfigError(f"http_server_config.headers.{name} holds a line break")
        if text:
            out[name] = text
    return out


def _users(users) -> dict[str, bytes]:
    out = {}
    for user, hashed in _mapping(users, "basic_auth_users",
                                 "a mapping of user: bcrypt hash").items():
        h = (_text(hashed, f"basic_auth_users.{user}") or "").encode("utf-8", "replace")
        if not re.fullmatch(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}", h):
            raise WebConfigError(f"basic_auth_users: the password of {user[:60]!r} "
                                 "is not a bcrypt hash (htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        out[user] = h
    return out


def _rate_limit(rate: dict, warnings: list[str]) -> tuple[float, int] | None:
    interval = rate.get("interval")
    if _null(interval):
        seconds = 0.0
    elif not isinstance(interval, (dict, list)) and interval.tag.endswith(":int"):
        seconds = _typed(interval, "rate_limit.interval", "int", "a duration") * 1e-9  # ns
    else:
        seconds = parse_go_duration(_text(interval, "rate_limit.interval") or "0")
    burst = _typed(rate.get("burst"), "rate_limit.burst", "int", "a whole number") or 0
    if burst < 0:
        raise WebConfigError("rate_limit.burst must be 0 or more")
    if seconds <= 0:
        return None
    if burst == 0:
        warnings.append("rate_limit.burst is 0: every request is answered 429")
    return seconds, burst


# --- TLS: the values, read here; the context, built in exporter/webtls.py ----------------

def _one_of(tls: dict, inline: str, file: str, base: str, files: list[str]) -> bytes | None:
    """PEM given inline or as a file (relative to the config file), not both."""
    text = _text(tls.get(inline), f"tls_server_config.{inline}")
    name = _text(tls.get(file), f"tls_server_config.{file}")
    if text and name:
        raise WebConfigError(f"tls_server_config: give {inline} or {file}, not both")
    if name:
        path = name if os.path.isabs(name) else os.path.join(base, name)
        files.append(path)
        return read_regular(path, f"tls_server_config.{file}")
    return text.encode() if text else None


def _tls(tls: dict, base: str, files: list[str], warnings: list[str]):
    try:
        cert = _one_of(tls, "cert", "cert_file", base, files)
        key = _one_of(tls, "key", "key_file", base, files)
    except WebConfigError as e:
        raise WebConfigError(f"tls_server_config: cannot load cert_file/key_file: {e}") from None
    if cert is None:
        raise WebConfigError("tls_server_config: cert_file (or cert) is missing")
    if key is None:
        raise WebConfigError("tls_server_config: key_file (or key) is missing")
    key_ = "tls_server_config."
    settings = webtls.TLSSettings(
        cert=cert, key=key, client_ca=_one_of(tls, "client_ca", "client_ca_file", base, files),
        client_auth=_text(tls.get("client_auth_type"), key_ + "client_auth_type") or "",
        min_version=_text(tls.get("min_version"), key_ + "min_version") or "TLS12",
        max_version=_text(tls.get("max_version"), key_ + "max_version") or "TLS13",
        cipher_suites=_texts(tls.get("cipher_suites"), key_ + "cipher_suites"),
        prefer_server=_typed(tls.get("prefer_server_cipher_suites"),
                             key_ + "prefer_server_cipher_suites", "bool", "true or false"),
        curves=_texts(tls.get("curve_preferences"), key_ + "curve_preferences"),
        allowed_sans=_texts(tls.get("client_allowed_sans"), key_ + "client_allowed_sans"))
    try:
        return webtls.context(settings, warnings)
    except webtls.TLSError as e:
        raise WebConfigError(str(e)) from None


# --- the file in force -----------------------------------------------------------------

class WebConfigHolder:
    """The config in force; re-read on SIGHUP or when a file it names changes. A new
    config applies to the next connection, TLS settings included; a broken one leaves
    the previous one in force and says so."""

    def __init__(self, path: str | None):
        self.path = path
        self.config = load_web_config(path) if path else WebConfig()
        self.last_reload_ok = True
        self._stamps = self._stat()
        self._warn(self.config)

    def _stat(self) -> dict[str, tuple | None]:
        out: dict[str, tuple | None] = {}
        for f in self.config.files:
            try:
                st = os.stat(f)
                out[f] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                out[f] = None
        return out

    @staticmethod
    def _warn(config: WebConfig) -> None:
        for w in config.warnings:
            log.warning("web config: %s", w)

    def changed(self) -> bool:
        return self.path is not None and self._stat() != self._stamps

    def reload(self) -> bool:
        if not self.path:
            return True
        try:
            new = load_web_config(self.path)
        except WebConfigError as e:
            self.last_reload_ok = False
            self._stamps = self._stat()     # said once; the next change is tried again
            log.error("web config not reloaded, the previous one stays in force: %s", e)
            return False
        self.config = new
        self._stamps = self._stat()
        self.last_reload_ok = True
        self._warn(new)
        log.info("web config reloaded (%s, %s, %d user(s)); it applies to new connections",
                 describe_tls(new.ssl), "rate limited" if new.rate_limit else "no rate limit",
                 len(new.users))
        return True
