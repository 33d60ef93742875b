"""How each setting's value is parsed and checked (the `parse` of every entry of
exporter/options.py): durations, addresses, ports, users, regular expressions, log
files, DSNs, budgets... Each raises `ConfigError` with a message that never echoes a
secret (DSNs)."""

from __future__ import annotations

import os
import pwd
import re

from exporter.logs.caddy import SIGNATURES as _CADDY_SIGNATURES
from exporter.logs.access import parse_access_formats as _access_formats
from exporter.logs.files import LogFile, parse_log_file
from exporter.logs.formats import AccessFormat
from exporter.logs.routes import parse_route as _parse_route
from exporter.logs.signatures import Signature, SignatureError, merge, parse_user_signature
from exporter.statsd.parse import parse_prefix_map

DEFAULT_PORT = 10188


class ConfigError(ValueError):
    pass


def parse_duration(text: str | int | float) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
        if not m:
            raise ConfigError(f"{text!r} is not a duration (examples: 500ms, 10s, 5m, 1h)")
        value = float(m.group(1)) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600,
                                     "d": 86400}[m.group(2)]
    if value < 0:
        raise ConfigError(f"{text!r} is negative")
    return value


def parse_listen_address(text: str) -> tuple[str | None, int]:
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", text.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"{text!r} is not HOST:PORT (examples: :{DEFAULT_PORT}, "
                          f"127.0.0.1:{DEFAULT_PORT}, [::1]:{DEFAULT_PORT})")
    host = m.group(1) or m.group(2) or None
    return host, int(m.group(3))


def parse_ports(values) -> tuple[int, ...]:
    ports = []
    for v in _as_list(values):
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise ConfigError(f"{part!r} is not a port number")
            ports.append(int(part))
    return tuple(ports)


def parse_app_names(values) -> tuple[tuple[re.Pattern, str], ...]:
    out = []
    for v in _as_list(values):
        if isinstance(v, dict):
            pattern, name = v.get("match"), v.get("name")
        else:
            pattern, _, name = str(v).rpartition("=")
        if not pattern or not name:
            raise ConfigError(f"{v!r} is not REGEX=NAME")
        try:
            out.append((re.compile(pattern), name))
        except re.error as e:
            raise ConfigError(f"{pattern!r} is not a valid regular expression: {e}") from None
    return tuple(out)


def parse_users(values) -> frozenset[int] | None:
    """User names or uids whose masters are watched; None (all users) when empty."""
    uids = set()
    for v in _as_list(values):
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if part.isdigit():
                uids.add(int(part))
                continue
            try:
                uids.add(pwd.getpwnam(part).pw_uid)
            except KeyError:
                raise ConfigError(f"{part!r} is not a user on this host (give a uid for "
                                  "users that exist only inside containers)") from None
    return frozenset(uids) or None


def parse_regex(value) -> re.Pattern:
    try:
        return re.compile(str(value))
    except re.error as e:
        raise ConfigError(f"{value!r} is not a valid regular expression: {e}") from None


def _whole(lo: int, hi: int):
    """A parser of whole numbers from `lo` to `hi`."""
    def parse(value) -> int:
        text = str(value).strip()
        if not text.isdigit() or not lo <= int(text) <= hi:
            raise ConfigError(f"{value!r} is not a whole number from {lo} to {hi}")
        return int(text)
    return parse


parse_max_masters = _whole(1, 100_000)
parse_max_peers = _whole(1, 1000)


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{value!r} is not true or false")


def _as_list(values) -> list:
    if values is None:
        return []
    if isinstance(values, (list, tuple)):
        return list(values)
    return [values]


def _log_level(value) -> str:
    low = str(value).lower()
    if low not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"{value!r} is not one of debug, info, warn, error")
    return "warning" if low == "warn" else low


def parse_worker_series(value) -> str:
    low = str(value).strip().lower()
    if low not in ("all", "none"):
        raise ConfigError(f"{value!r} is not one of all, none")
    return low


def _path(value) -> str:
    if not str(value).startswith("/"):
        raise ConfigError(f"{value!r} must be an absolute path")
    return str(value)


def _telemetry_path(value) -> str:
    value = str(value)
    if not value.startswith("/") or value in ("/", "/-/healthy"):
        raise ConfigError(f"{value!r} must start with / and not be / or /-/healthy")
    return value


def _positive_duration(value) -> float:
    d = parse_duration(value)
    if d <= 0:
        raise ConfigError(f"{value!r} must be greater than 0")
    return d


MIN_LINE = 256
MAX_LINE = 16 * 1024 * 1024


def parse_log_files(values) -> tuple[LogFile, ...]:
    out: list[LogFile] = []
    seen: set[str] = set()
    for v in _as_list(values):
        try:
            f = parse_log_file(v)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if f.path in seen:
            raise ConfigError(f"{f.path} is listed twice")
        seen.add(f.path)
        out.append(f)
    return tuple(out)


def parse_signatures(values) -> tuple[Signature, ...]:
    try:
        sigs = tuple(parse_user_signature(v) for v in _as_list(values))
        merge(sigs)  # duplicate names, limits
        for s in sigs:
            if s.name in {c.name for c in _CADDY_SIGNATURES}:
                raise SignatureError(f"signature name {s.name!r} is built in; choose another name")
    except SignatureError as e:
        raise ConfigError(str(e)) from None
    return sigs


def parse_optional_path(value) -> str:
    """A path, or "" for none/off/false/empty (the feature that reads it is off)."""
    text = str(value).strip()
    if text.lower() in ("", "none", "off", "false"):
        return ""
    return _path(text)


def parse_line_length(value) -> int:
    text = str(value).strip().lower()
    mult = 1
    for suffix, m in (("kib", 1024), ("mib", 1024 * 1024), ("k", 1024), ("m", 1024 * 1024)):
        if text.endswith(suffix):
            text, mult = text[: -len(suffix)], m
            break
    if not text.isdigit():
        raise ConfigError(f"{value!r} is not a size in bytes (examples: 65536, 64KiB, 1MiB)")
    n = int(text) * mult
    if not MIN_LINE <= n <= MAX_LINE:
        raise ConfigError(f"{value!r} must be between {MIN_LINE} bytes and 16MiB")
    return n


def parse_routes(values) -> tuple[str, ...]:
    """--requests.route NAME=REGEX values, each checked (exporter/logs/routes.py)."""
    out = tuple(str(v) for v in _as_list(values))
    try:
        for v in out:
            _parse_route(v)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return out


def parse_access_formats(values) -> tuple[AccessFormat, ...]:
    try:
        return _access_formats(_as_list(values))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_statsd_prefixes(values) -> dict[str, str]:
    try:
        return parse_prefix_map(_as_list(values))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_receive_buffer(value) -> int:
    """0 (the kernel's default) or 64KiB to 16MiB."""
    if str(value).strip() == "0":
        return 0
    try:
        n = parse_line_length(value)
    except ConfigError:
        n = 0
    if n < 64 * 1024:
        raise ConfigError(f"{value!r} must be 0 (the kernel's default) or a size from 64KiB to 16MiB")
    return n


def parse_dsns(values) -> tuple[str, ...]:
    """DSNs as given; validated without ever echoing them (they may hold a password)."""
    from exporter.postgres.dsn import server_label
    out = []
    for i, v in enumerate(_as_list(values)):
        text = str(v).strip()
        if not text:
            continue
        try:
            server_label(text)
        except ValueError as e:
            raise ConfigError(f"DSN #{i + 1}: {e}") from None
        out.append(text)
    return tuple(out)


def parse_dsn_files(values) -> tuple[str, ...]:
    out = []
    for v in _as_list(values):
        path = str(v)
        if not os.path.isabs(path):
            raise ConfigError(f"{path!r} must be an absolute path")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"cannot read {path}")
        out.append(path)
    return tuple(out)


def parse_app_budgets(values) -> dict[str, float | str | None]:
    """APP=N | APP=threads | APP=none; APP '*' sets the default for undeclared apps."""
    out: dict[str, float | str | None] = {}
    for v in _as_list(values):
        if isinstance(v, dict):  # config file: [postgres.app-budget] shop = 15
            items = list(v.items())
        else:
            app, sep, value = str(v).rpartition("=")
            if not sep or not app.strip():
                raise ConfigError(f"{v!r} is not APP=N (N connections per worker, 'threads' or 'none')")
            items = [(app, value)]
        for app, value in items:
            app, value = str(app).strip(), str(value).strip().lower()
            if value in ("threads", "none"):
                out[app] = value
                continue
            try:
                n = float(value)
            except ValueError:
                raise ConfigError(f"{app}={value}: the budget must be a number, 'threads' or 'none'") from None
            if n < 0 or n != n:
                raise ConfigError(f"{app}={value}: the budget must not be negative")
            out[app] = n
    return out


def _max_names(value) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise ConfigError(f"{value!r} is negative")
    return n



def _positive_int(value) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise ConfigError(f"{value!r} is not a whole number from 1 to 1000000")
    return int(text)


def _strings(values) -> tuple[str, ...]:
    return tuple(map(str, _as_list(values)))


def _ratio(value) -> float:
    """A non-negative number (a ratio or a count per core), at most 1e6."""
    try:
        n = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{value!r} is not a number") from None
    if not 0 <= n <= 1e6:  # also refuses NaN
        raise ConfigError(f"{value!r} must be a number from 0 to 1000000")
    return n
