"""Reading the settings: command-line flags, environment variables and an optional TOML
config file, against the one table of options in `exporter/options.py`.

Every setting has one flag in the Prometheus style (`--web.listen-address`), one
environment variable (`GUNICORN_EXPORTER_WEB_LISTEN_ADDRESS`) and one key in the config
file (`web.listen-address`, i.e. `[web] listen-address = ...`). Precedence: flag > env >
config file > default. Bad input of any kind ends in one message that lists every
problem found, and exit 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib

from exporter import __version__
from exporter.collectors import REGISTRY
from exporter.collectors.gunicorn import GunicornOptions
from exporter.collectors.postgres import PostgresOptions
from exporter.collectors.stacks import StacksOptions
from exporter.postgres.dsn import dsn_endpoint, read_dsn_file, server_label
from exporter.options import BY_KEY, OPTIONS
from exporter.logs.routes import RouteError, parse_routes
from exporter.parsing import ConfigError, parse_bool

ENV_PREFIX = "GUNICORN_EXPORTER_"
# The collectors, on or off by default (--collector.NAME / --no-collector.NAME)
COLLECTORS: dict[str, tuple[bool, str]] = {n: (s.default, s.help) for n, s in REGISTRY.items()}
SETTINGS = BY_KEY   # key -> Option (kept for the docs test)


def _field(o):
    default = o.default
    if isinstance(default, (dict, list, set)):
        return o.dest, o.value_type, dataclasses.field(
            default_factory=lambda d=default: type(d)(d), repr=not o.secret)
    return o.dest, o.value_type, dataclasses.field(default=default, repr=not o.secret)


class _Methods:
    """What the settings mean for the parts of the exporter that use them."""

    def use_procfs(self) -> None:
        """psutil (worker USS/PSS, the doctor's facts) reads the same proc root as the
        rest: process-wide, so only the entry points call this."""
        if self.procfs != "/proc":
            import psutil
            psutil.PROCFS_PATH = self.procfs

    def postgres_options(self) -> PostgresOptions:
        """PostgresOptions (reads the DSN files; ConfigError when one is bad)."""
        dsns = list(self.postgres_dsns)
        for path in self.postgres_dsn_files:
            try:
                from_file = read_dsn_file(path)
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"postgres.dsn-file: cannot read {path}: "
                                  f"{getattr(e, 'strerror', None) or e}") from None
            for i, dsn in enumerate(from_file):
                try:
                    server_label(dsn)
                except ValueError as e:
                    raise ConfigError(f"postgres.dsn-file {path}: DSN #{i + 1}: {e}") from None
            dsns.extend(from_file)
        declared = dict(self.postgres_app_budgets)
        default = declared.pop("*", "threads")
        return PostgresOptions(dsns=tuple(dsns), timeout=self.postgres_timeout,
                               max_application_names=self.postgres_max_application_names,
                               budgets=declared, default_budget=None if default == "none" else default)

    def database_endpoints(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """TCP ports and unix socket paths of databases whose connections workers are
        counted to: --gunicorn.db-port / --gunicorn.db-socket plus every --postgres.dsn
        server."""
        ports = list(self.db_ports)
        paths = list(self.db_socket_paths)
        for dsn in self.postgres_options().dsns:
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

    def request_routes(self):
        """The routes of --requests.route and --requests.route-file, or None (ConfigError
        when a file cannot be read, a line is bad, or there are too many names)."""
        try:
            return parse_routes(self.request_route_values, self.request_route_files,
                                self.request_max_routes)
        except RouteError as e:
            raise ConfigError(f"requests.route: {e}") from None

    def stacks_options(self) -> StacksOptions:
        return StacksOptions(
            timeout_share=self.stacks_timeout_share, min_wait=self.stacks_min_wait,
            interval=self.stacks_interval, max_concurrent=self.stacks_max_concurrent,
            max_cpu=self.stacks_max_cpu, capture_timeout=self.stacks_capture_timeout,
            py_spy=self.stacks_py_spy)

    def gunicorn_options(self) -> GunicornOptions:
        ports, paths = self.database_endpoints()
        return GunicornOptions(
            db_ports=ports, db_socket_paths=paths, app_names=self.app_names,
            control_socket=self.control_socket, control_timeout=self.control_timeout,
            forget_after=self.forget_after, remember_after=self.remember_after,
            expected_apps=self.expected_apps, users=self.users,
            include=self.include, exclude=self.exclude, max_masters=self.max_masters,
            memory_detail_interval=self.memory_detail_interval,
            dependency_max_peers=self.dependency_max_peers)


Config = dataclasses.make_dataclass(
    "Config",
    [_field(o) for o in OPTIONS]
    + [("config_file", str | None, dataclasses.field(default=None)),
       ("collectors", dict[str, bool], dataclasses.field(
           default_factory=lambda: {n: s.default for n, s in REGISTRY.items()}))],
    bases=(_Methods,))
Config.__doc__ = ("Every setting, by its Option.dest and of its Option.value_type "
                  "(exporter/options.py), plus config_file and collectors.")


def build_parser(hidden: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The flags. Settings whose key starts with one of `hidden` ("web.", "collector.")
    are still accepted (one config file or environment serves every command) but left out
    of --help: a command that does not use them (the doctor) does not offer them."""
    p = argparse.ArgumentParser(
        prog="gunicorn-exporter",
        description="Prometheus exporter that watches gunicorn from outside.",
        epilog=f"Every flag can also be set with an environment variable {ENV_PREFIX}<FLAG> "
               "(upper case, dots and dashes as underscores) or a key in --config.file. "
               "Commands: 'gunicorn-exporter doctor' prints configuration advice for every "
               "gunicorn on this host (doctor --help); 'gunicorn-exporter demo' starts a "
               "throwaway gunicorn with some load to look at.")
    p.add_argument("--version", action="version", version=f"gunicorn-exporter {__version__}")
    p.add_argument("--config.file", dest="config_file", metavar="PATH",
                   help="TOML file with the same keys as the flags, e.g. [web] listen-address = ':10188'")

    def shown(key: str, text: str) -> str:
        return argparse.SUPPRESS if key.startswith(hidden) else text
    for o in OPTIONS:
        if o.flag:
            p.add_argument(f"--{o.key}", dest=o.dest, metavar="BOOL", help=shown(o.key, o.help_text()),
                           nargs="?", const=True, default=None)
            continue
        p.add_argument(f"--{o.key}", dest=o.dest, metavar="VALUE", help=shown(o.key, o.help_text()),
                       action="append" if o.repeatable else "store", default=None)
    for name, (on, text) in COLLECTORS.items():
        # (argparse cannot format the usage of a hidden mutually exclusive group)
        group = p if "collector.".startswith(hidden) else p.add_mutually_exclusive_group()
        group.add_argument(f"--collector.{name}", dest=f"collector_{name}", action="store_true",
                           default=None, help=shown("collector.", f"enable the {name} collector: "
                                                    f"{text}" + (" (default)" if on else "")))
        group.add_argument(f"--no-collector.{name}", dest=f"collector_{name}", action="store_false",
                           default=None, help=shown("collector.", f"disable the {name} collector"
                                                    + ("" if on else " (default)")))
    return p


def env_name(key: str) -> str:
    return ENV_PREFIX + re.sub(r"[.\-]", "_", key).upper()


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse everything; on bad input print one message listing every problem and exit 2."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    environ = os.environ if environ is None else environ
    errors = [f"unrecognized arguments: {' '.join(unknown)}"] if unknown else []
    cfg = _build(args, environ, errors)
    if errors:
        parser.error("; ".join(errors))
    return cfg


def _build(args: argparse.Namespace, environ, errors: list[str]) -> Config:
    cfg = Config()
    layers: list[tuple[str, dict[str, object]]] = []
    config_file = args.config_file or environ.get(env_name("config.file"))
    if config_file:
        try:
            layers.append((f"config file {config_file}", _read_config_file(config_file)))
        except ConfigError as e:
            errors.append(str(e))
        cfg.config_file = config_file
    env_layer: dict[str, object] = {}
    for key in [o.key for o in OPTIONS] + [f"collector.{n}" for n in COLLECTORS]:
        name = env_name(key)
        if name in environ:
            value: object = environ[name]
            o = BY_KEY.get(key)
            if o is not None and o.repeatable:
                value = [value] if not o.comma_split else \
                    [v for v in str(value).split(",") if v.strip()]
            env_layer[key] = value
    layers.append(("environment", env_layer))
    flag_layer: dict[str, object] = {o.key: getattr(args, o.dest) for o in OPTIONS
                                     if getattr(args, o.dest) is not None}
    for name in COLLECTORS:
        value = getattr(args, f"collector_{name}")
        if value is not None:
            flag_layer[f"collector.{name}"] = value
    layers.append(("flag", flag_layer))

    for where, layer in layers:
        for key, value in layer.items():
            try:
                _apply(cfg, key, value)
            except ConfigError as e:
                errors.append(f"{where}: {e}")
    try:
        cfg.request_routes()
    except ConfigError as e:
        errors.append(str(e))
    if not cfg.db_ports:
        errors.append("gunicorn.db-port: at least one port is needed")
    if not cfg.sampler_interval:
        cfg.collectors["sampler"] = False        # --sampler.interval 0 turns it off
    elif cfg.sampler_interval < 0.01:
        errors.append("sampler.interval: at least 10ms (or 0 to turn the sampler off)")
    if not 0 < cfg.stacks_timeout_share <= 1:
        errors.append("stacks.timeout-share: a share of --timeout above 0, at most 1")
    if not cfg.stacks_max_cpu > 0:
        errors.append("stacks.max-cpu: a share of a core above 0 (e.g. 0.01)")
    return cfg


def _apply(cfg: Config, key: str, value: object) -> None:
    if key.startswith("collector."):
        name = key.split(".", 1)[1]
        if name not in COLLECTORS:
            raise ConfigError(f"unknown collector {name!r}; known: {', '.join(COLLECTORS)}")
        try:
            cfg.collectors[name] = parse_bool(value)
        except ConfigError as e:
            raise ConfigError(f"collector.{name}: {e}") from None
        return
    o = BY_KEY.get(key)
    if o is None:
        raise ConfigError(f"unknown setting {key!r}")
    try:
        setattr(cfg, o.dest, o.parse(value))
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("collector",) and key not in BY_KEY:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
