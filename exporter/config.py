"""Settings: command-line flags, environment variables and an optional TOML config file.

Every setting has one flag in the Prometheus style (`--web.listen-address`), one
environment variable (`GUNICORN_EXPORTER_WEB_LISTEN_ADDRESS`) and one key in the config
file (`web.listen-address`, i.e. `[web] listen-address = ...`). Precedence: flag > env >
config file > default. Bad input of any kind ends in one readable message and exit 2.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import tomllib
from dataclasses import dataclass, field

from exporter import __version__
from exporter.collectors.logs import LogFile, parse_log_file
from exporter.collectors.postgres import (PostgresOptions, dsn_endpoint, read_dsn_file,
                                          server_label)
from exporter.logs.signatures import Signature, SignatureError, merge, parse_user_signature

DEFAULT_PORT = 10188
ENV_PREFIX = "GUNICORN_EXPORTER_"

# name: default on?  (the registry of collectors; --collector.NAME / --no-collector.NAME)
COLLECTORS: dict[str, tuple[bool, str]] = {
    "gunicorn": (True, "masters, workers, connections, heartbeats, listen queues"),
    "netstat": (True, "net.core.somaxconn and TCP listen overflow counters"),
    "oom": (True, "kernel OOM kills attributed to gunicorn apps (/dev/kmsg, cgroup and vmstat counters)"),
    "logs": (True, "error signatures counted in the log files named by --logs.file"),
    "postgres": (True, "pg_stat_activity of --postgres.dsn servers, connections attributed to workers, budgets"),
}


@dataclass
class Config:
    listen_address: str = f":{DEFAULT_PORT}"
    telemetry_path: str = "/metrics"
    log_level: str = "info"
    procfs: str = "/proc"
    scrape_timeout: float = 8.0
    collectors: dict[str, bool] = field(default_factory=lambda: {k: v[0] for k, v in COLLECTORS.items()})
    db_ports: tuple[int, ...] = (5432, 6432)
    db_socket_paths: tuple[str, ...] = ()
    app_names: tuple[tuple[re.Pattern, str], ...] = ()
    expected_apps: tuple[str, ...] = ()
    control_socket: bool = True
    control_timeout: float = 1.0
    forget_after: float = 0.0
    users: frozenset[int] | None = None
    include: re.Pattern | None = None
    exclude: re.Pattern | None = None
    max_masters: int = 256
    config_file: str | None = None
    kmsg_path: str = "/dev/kmsg"
    log_files: tuple[LogFile, ...] = ()
    log_signatures: tuple[Signature, ...] = ()
    log_poll_interval: float = 1.0
    log_max_line: int = 64 * 1024
    postgres_dsns: tuple[str, ...] = field(default=(), repr=False)  # may hold passwords
    postgres_dsn_files: tuple[str, ...] = ()
    postgres_timeout: float = 2.0
    postgres_app_budgets: dict[str, float | str] = field(default_factory=dict)
    postgres_max_application_names: int = 20

    @property
    def host_port(self) -> tuple[str | None, int]:
        return parse_listen_address(self.listen_address)


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


def parse_max_masters(value) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise ConfigError(f"{value!r} is not a whole number from 1 to 100000")
    return int(text)


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
    except SignatureError as e:
        raise ConfigError(str(e)) from None
    return sigs


def parse_kmsg_path(value) -> str:
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


def parse_dsns(values) -> tuple[str, ...]:
    """DSNs as given; validated without ever echoing them (they may hold a password)."""
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


# key (flag without --, env and config key) -> (Config field, converter, repeatable, help)
SETTINGS: dict[str, tuple[str, object, bool, str]] = {
    "web.listen-address": ("listen_address", lambda v: (parse_listen_address(str(v)), str(v))[1], False,
                           f"address to serve metrics on (default :{DEFAULT_PORT})"),
    "web.telemetry-path": ("telemetry_path", _telemetry_path, False, "path of the metrics page (default /metrics)"),
    "log.level": ("log_level", _log_level, False, "debug, info, warn or error (default info)"),
    "path.procfs": ("procfs", _path, False, "proc file system root (default /proc)"),
    "scrape.timeout": ("scrape_timeout", _positive_duration, False,
                       "time limit for one collection; Prometheus' own scrape timeout header can only shorten it (default 8s)"),
    "gunicorn.db-port": ("db_ports", parse_ports, True,
                         "TCP port of Postgres/pgbouncer that worker connections are counted to (repeatable or comma-separated; default 5432,6432)"),
    "gunicorn.db-socket": ("db_socket_paths", lambda v: tuple(map(str, _as_list(v))), True,
                           "extra unix socket path of a database (repeatable; .s.PGSQL.<db-port> sockets are always counted)"),
    "gunicorn.app-name": ("app_names", parse_app_names, True,
                          "REGEX=NAME: call a master whose name or command line matches REGEX NAME (repeatable, first match wins)"),
    "gunicorn.expected-app": ("expected_apps", lambda v: tuple(map(str, _as_list(v))), True,
                              "an app that should always run: gunicorn_up{app} 0 from the first scrape when it is absent (repeatable)"),
    "gunicorn.control-socket": ("control_socket", parse_bool, False,
                                "ask the master's control socket (read-only 'show' commands) for its settings (default true)"),
    "gunicorn.control-socket-timeout": ("control_timeout", _positive_duration, False, "time limit for one control socket query (default 1s)"),
    "gunicorn.forget-after": ("forget_after", parse_duration, False,
                              "stop reporting gunicorn_up 0 for an app gone this long; 0 = never (default 0)"),
    "gunicorn.user": ("users", parse_users, True,
                      "watch only masters run by this user (name or uid; repeatable or comma-separated; default: every user)"),
    "gunicorn.include": ("include", parse_regex, False,
                         "report only apps whose whole name matches this regular expression (default: all)"),
    "gunicorn.exclude": ("exclude", parse_regex, False,
                         "do not report apps whose whole name matches this regular expression (default: none)"),
    "gunicorn.max-masters": ("max_masters", parse_max_masters, False,
                             "masters measured per scrape, shared out between their users; the rest are counted in gunicorn_exporter_dropped_masters (default 256)"),
    "oom.kmsg-path": ("kmsg_path", parse_kmsg_path, False,
                      "kernel log device read for OOM kill records; 'none' = use cgroup and /proc/vmstat counters only (default /dev/kmsg)"),
    "logs.file": ("log_files", parse_log_files, True,
                  "[APP=]PATH: follow this log file (gunicorn error log, application log, nginx error/access log) and count error signatures in it, against APP unless a line names its app (repeatable)"),
    "logs.signature": ("log_signatures", parse_signatures, True,
                       "NAME=REGEX: count log lines matching REGEX as signature NAME, in addition to the built-in ones (repeatable)"),
    "logs.poll-interval": ("log_poll_interval", _positive_duration, False,
                           "how often log files are checked for new lines and rotation (default 1s)"),
    "logs.max-line-length": ("log_max_line", parse_line_length, False,
                             "longer lines are matched on their beginning only (default 64KiB)"),
    "postgres.dsn": ("postgres_dsns", parse_dsns, True,
                     "libpq connection string or postgresql:// URI of a server to watch (repeatable); "
                     "prefer --postgres.dsn-file or PGPASSFILE for the password. The usual PG* environment variables apply"),
    "postgres.dsn-file": ("postgres_dsn_files", parse_dsn_files, True,
                          "file with one DSN per line (# comments), read at start; keeps passwords out of the process list (repeatable)"),
    "postgres.timeout": ("postgres_timeout", _positive_duration, False,
                         "time limit per server and scrape; also the session's statement_timeout and lock_timeout (default 2s)"),
    "postgres.app-budget": ("postgres_app_budgets", parse_app_budgets, True,
                            "APP=N: database connections one worker of APP may hold (SQLAlchemy pool_size + max_overflow), "
                            "or APP=threads, or APP=none; *=... sets the default for other apps (default: threads) (repeatable)"),
    "postgres.max-application-names": ("postgres_max_application_names", _max_names, False,
                                       "application_name values kept per server; the rest are reported as 'other' (default 20)"),
}
# Repeatable settings whose values may contain commas: one value per environment variable.
NO_COMMA_SPLIT = {"gunicorn.app-name", "logs.signature", "postgres.dsn", "gunicorn.include",
                  "gunicorn.exclude"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gunicorn-exporter",
        description="Prometheus exporter that watches gunicorn from outside.",
        epilog=f"Every flag can also be set with an environment variable {ENV_PREFIX}<FLAG> "
               "(upper case, dots and dashes as underscores) or a key in --config.file. "
               "'gunicorn-exporter demo' starts a throwaway gunicorn with some load to look at.")
    p.add_argument("--version", action="version", version=f"gunicorn-exporter {__version__}")
    p.add_argument("--config.file", dest="config_file", metavar="PATH",
                   help="TOML file with the same keys as the flags, e.g. [web] listen-address = ':10188'")
    for key, (dest, _conv, repeatable, text) in SETTINGS.items():
        p.add_argument(f"--{key}", dest=dest, metavar="VALUE", help=text,
                       action="append" if repeatable else "store", default=None)
    for name, (on, text) in COLLECTORS.items():
        group = p.add_mutually_exclusive_group()
        group.add_argument(f"--collector.{name}", dest=f"collector_{name}", action="store_true",
                           default=None, help=f"enable the {name} collector: {text}" + (" (default)" if on else ""))
        group.add_argument(f"--no-collector.{name}", dest=f"collector_{name}", action="store_false",
                           default=None, help=f"disable the {name} collector" + ("" if on else " (default)"))
    return p


def env_name(key: str) -> str:
    return ENV_PREFIX + re.sub(r"[.\-]", "_", key).upper()


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("collector",):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse everything; on bad input print one message and exit 2 (argparse's convention)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        return _build(args, environ)
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def _build(args: argparse.Namespace, environ) -> Config:
    cfg = Config()
    layers: list[tuple[str, dict[str, object]]] = []
    config_file = args.config_file or environ.get(env_name("config.file"))
    if config_file:
        layers.append((f"config file {config_file}", _read_config_file(config_file)))
        cfg.config_file = config_file
    env_layer: dict[str, object] = {}
    for key in list(SETTINGS) + [f"collector.{n}" for n in COLLECTORS]:
        name = env_name(key)
        if name in environ:
            value: object = environ[name]
            if key in SETTINGS and SETTINGS[key][2]:
                value = [value] if key in NO_COMMA_SPLIT else \
                    [v for v in str(value).split(",") if v.strip()]
            env_layer[key] = value
    layers.append(("environment", env_layer))
    flag_layer: dict[str, object] = {}
    for key, (dest, _c, _r, _h) in SETTINGS.items():
        if getattr(args, dest) is not None:
            flag_layer[key] = getattr(args, dest)
    for name in COLLECTORS:
        value = getattr(args, f"collector_{name}")
        if value is not None:
            flag_layer[f"collector.{name}"] = value
    layers.append(("flag", flag_layer))

    for where, layer in layers:
        for key, value in layer.items():
            if key.startswith("collector."):
                name = key.split(".", 1)[1]
                if name not in COLLECTORS:
                    raise ConfigError(f"{where}: unknown collector {name!r}; known: {', '.join(COLLECTORS)}")
                try:
                    cfg.collectors[name] = parse_bool(value)
                except ConfigError as e:
                    raise ConfigError(f"{where}: collector.{name}: {e}") from None
                continue
            if key not in SETTINGS:
                raise ConfigError(f"{where}: unknown setting {key!r}")
            dest, conv, _rep, _help = SETTINGS[key]
            try:
                setattr(cfg, dest, conv(value))
            except ConfigError as e:
                raise ConfigError(f"{where}: {key}: {e}") from None
    if not cfg.db_ports:
        raise ConfigError("gunicorn.db-port: at least one port is needed")
    return cfg


def _read_config_file(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    flat = _flatten(data)
    collectors = flat.pop("collector", None)
    if collectors is not None:
        if not isinstance(collectors, dict):
            raise ConfigError(f"config file {path}: [collector] must be a table of NAME = true/false")
        for name, on in collectors.items():
            flat[f"collector.{name}"] = on
    return flat


def postgres_options(cfg: Config) -> PostgresOptions:
    """PostgresOptions from a Config (reads the DSN files)."""
    dsns = list(cfg.postgres_dsns)
    for path in cfg.postgres_dsn_files:
        try:
            from_file = read_dsn_file(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"postgres.dsn-file: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        for i, dsn in enumerate(from_file):
            try:
                server_label(dsn)
            except ValueError as e:
                raise ConfigError(f"postgres.dsn-file {path}: DSN #{i + 1}: {e}") from None
        dsns.extend(from_file)
    declared = dict(cfg.postgres_app_budgets)
    default = declared.pop("*", "threads")
    if default == "none":
        default = None
    return PostgresOptions(dsns=tuple(dsns), timeout=cfg.postgres_timeout,
                           max_application_names=cfg.postgres_max_application_names,
                           budgets=declared, default_budget=default)


def database_endpoints(cfg: Config, options: PostgresOptions) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """TCP ports and unix socket paths of databases whose connections workers are counted
    to: --gunicorn.db-port / --gunicorn.db-socket plus every --postgres.dsn server."""
    ports = list(cfg.db_ports)
    paths = list(cfg.db_socket_paths)
    for dsn in options.dsns:
        try:
            host, port, _db = dsn_endpoint(dsn)
        except ValueError:
            continue
        if port not in ports:
            ports.append(port)
        for h in host.split(","):
            if h.startswith("/"):
                paths.append(os.path.join(h, f".s.PGSQL.{port}"))
    return tuple(ports), tuple(dict.fromkeys(paths))
