"""Work out a gunicorn master's effective settings without running any of its code.

Sources, lowest priority first (gunicorn's own order):
  1. gunicorn's defaults (`DEFAULTS` below, as of gunicorn 20-27); `workers` defaults to
     `$WEB_CONCURRENCY` and `bind` to `0.0.0.0:$PORT` when the master's environment sets them;
  2. the config file (`-c/--config`, default `./gunicorn.conf.py` in the master's cwd),
     evaluated statically by `exporter.gunicorn.confeval` (literals, arithmetic over
     `multiprocessing.cpu_count()`, environment reads; never executed);
  3. `GUNICORN_CMD_ARGS` from the master's environment;
  4. the command line (both parsed by `exporter.gunicorn.cmdline`);
  5. the control socket's `show config` answer, when the master proves it answered
     (merged by the collector, see `exporter/gunicorn/control.py`): this is what the
     running master really uses, so it wins.

Every value remembers where it came from (`Settings.sources`), so the
`gunicorn_setting_source_info` series can say so. A value none of these can reveal is
**unknown** (source `unknown`), never a default passed off as fact: a config file the
exporter could not read or evaluate, an environment it may not read (GUNICORN_CMD_ARGS
could set anything), an argv that setproctitle replaced. Values are range-checked:
anything outside `RANGES` is a problem and unknown.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from exporter.gunicorn import confeval
from exporter.gunicorn.cmdline import APPENDED, MAX_STRING, parse_args
from exporter.labels import bounded

DEFAULTS: dict[str, object] = {
    "workers": 1,
    "worker_class": "sync",
    "threads": 1,
    "worker_connections": 1000,
    "timeout": 30,
    "keepalive": 2,
    "backlog": 2048,
    "bind": ["127.0.0.1:8000"],
    "proc_name": None,
    "worker_tmp_dir": None,
    "max_requests": 0,
    "reuse_port": False,
    "control_socket": None,
    "control_socket_disable": False,
    "config": "./gunicorn.conf.py",
    "wsgi_app": None,
}
# Inclusive bounds of the integer settings; gunicorn itself accepts any non-negative int.
RANGES: dict[str, tuple[int, int]] = {
    "workers": (0, 100_000),
    "threads": (1, 100_000),
    "worker_connections": (1, 10_000_000),
    "timeout": (0, 100_000_000),
    "keepalive": (0, 100_000_000),
    "backlog": (0, 2**31 - 1),
    "max_requests": (0, 2**53),
}
MAX_BINDS = 64
STRING_SETTINGS = {"worker_class", "proc_name", "worker_tmp_dir", "control_socket", "config",
                   "wsgi_app"}
BOOL_SETTINGS = {"reuse_port", "control_socket_disable"}
LIST_SETTINGS = APPENDED   # bind, the one option gunicorn appends to a list
MAX_CONFIG_BYTES = 256 * 1024
UNKNOWN_SOURCE = "unknown"

# Worker class aliases gunicorn accepts, normalised to one short name.
WORKER_CLASS_ALIASES = {
    "sync": "sync", "gunicorn.workers.sync.syncworker": "sync",
    "gthread": "gthread", "gunicorn.workers.gthread.threadworker": "gthread",
    "gevent": "gevent", "gunicorn.workers.ggevent.geventworker": "gevent",
    "gevent_wsgi": "gevent", "gevent_pywsgi": "gevent",
    "eventlet": "eventlet", "gunicorn.workers.geventlet.eventletworker": "eventlet",
    "gunicorn.workers.ggevent.geventpywsgiworker": "gevent",
    "tornado": "tornado", "gunicorn.workers.gtornado.tornadoworker": "tornado",
    "asgi": "asgi", "gunicorn.workers.gasgi.asgiworker": "asgi",
    "uvicorn.workers.uvicornworker": "uvicorn",
    "uvicorn.workers.uvicornh11worker": "uvicorn",
    "uvicorn_worker.uvicornworker": "uvicorn",
    "uvicorn_worker.uvicornh11worker": "uvicorn",
}


@dataclass
class Settings:
    values: dict[str, object] = field(default_factory=lambda: dict(DEFAULTS))
    sources: dict[str, str] = field(default_factory=lambda: {k: "default" for k in DEFAULTS})
    app_module: str | None = None  # the WSGI/ASGI app argument, e.g. myproj.wsgi:application
    problems: list[str] = field(default_factory=list)

    def get(self, name: str):
        """The value, or None when it is unknown."""
        return self.values.get(name)

    def known(self, name: str) -> bool:
        return name in self.values

    def set(self, name: str, value: object, source: str) -> bool:
        """Take a value from `source` if it is valid; otherwise note a problem and make
        the setting unknown (a bad value in force means gunicorn did something else)."""
        try:
            value = _validate(name, value)
        except (TypeError, ValueError, OverflowError) as e:
            self.note(f"{source}: {name}: {e}")
            self.forget(name)
            return False
        self.values[name] = value
        self.sources[name] = source
        return True

    def forget(self, name: str) -> None:
        self.values.pop(name, None)
        self.sources[name] = UNKNOWN_SOURCE

    def forget_all(self, why: str, keep: frozenset[str] = frozenset()) -> None:
        for name in DEFAULTS:
            if name not in keep:
                self.forget(name)
        self.note(why)

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem[:300])

    @property
    def worker_class(self) -> str | None:
        value = self.values.get("worker_class")
        return None if value is None else normalise_worker_class(str(value))


def _validate(name: str, value: object) -> object:
    if name in RANGES:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")) or value != int(value):
                raise ValueError(f"{value!r} is not an integer")
            value = int(value)
        elif isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[+-]?\d{1,20}", text):
                raise ValueError(f"{text[:40]!r} is not an integer")
            value = int(text)
        elif not isinstance(value, int):
            raise ValueError(f"a {type(value).__name__} is not an integer")
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"{str(value)[:40]} is outside {lo}..{hi}")
        return value
    if name in LIST_SETTINGS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) > MAX_BINDS or \
                not all(isinstance(v, str) and len(v) <= MAX_STRING for v in items):
            raise ValueError(f"not a list of at most {MAX_BINDS} addresses")
        return list(items)
    if name in BOOL_SETTINGS:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if name in STRING_SETTINGS:
        if value is None:
            return None
        if not isinstance(value, str):
            value = str(value) if isinstance(value, (int, float)) else None
            if value is None:
                raise ValueError("not a string")
        if name == "proc_name":
            return bounded(value)  # a label value: cut, with a hash of the whole name
        if len(value) > MAX_STRING:
            raise ValueError(f"longer than {MAX_STRING} characters")
        return value
    return value


def normalise_worker_class(value: str) -> str:
    low = value.strip().lower()
    if low.startswith("egg:gunicorn#"):
        low = low.split("#", 1)[1]
    if low in WORKER_CLASS_ALIASES:
        return WORKER_CLASS_ALIASES[low]
    # Third-party packages move classes between modules (uvicorn.workers ->
    # uvicorn_worker._workers): recognise the package.
    root = low.split(".", 1)[0]
    if root in ("uvicorn", "uvicorn_worker"):
        return "uvicorn"
    return value.strip()


def resolve(argv_args: list[str] | None, environ: dict[str, str] | None,
            read_file=None, *, cpu_count: int | None = None,
            affinity: int | None = None) -> Settings:
    """Combine defaults, config file, GUNICORN_CMD_ARGS and the command line.

    argv_args: the gunicorn arguments, or None when the argv is not known (replaced by
    a setproctitle title). environ: the master's exec-time environment, None when it may
    not be read. read_file(path) -> str reads a config file as the master would (relative
    paths from its working directory), or returns its `evaluate_config` result (which
    callers cache); FileNotFoundError means there is none, any other OSError that it
    could not be read. cpu_count / affinity: what os.cpu_count() and
    len(os.sched_getaffinity(0)) give in the master, for config files that use them.
    """
    s = Settings()
    if argv_args is None:
        s.forget_all("the command line was replaced by a process title (setproctitle); "
                     "settings are known only from the control socket")
        return s
    cli, app = parse_args(argv_args)
    env_args: dict[str, object] = {}
    env_app = None
    if environ is None:
        s.forget_all("the environment may not be read (GUNICORN_CMD_ARGS, WEB_CONCURRENCY)")
    else:
        if environ.get("WEB_CONCURRENCY"):
            s.set("workers", environ["WEB_CONCURRENCY"], "env")
        if environ.get("PORT"):
            s.set("bind", [f"0.0.0.0:{environ['PORT'][:16]}"], "env")
        if environ.get("GUNICORN_CMD_ARGS"):
            try:
                env_args, env_app = parse_args(shlex.split(environ["GUNICORN_CMD_ARGS"][:MAX_STRING]))
            except ValueError as e:
                s.note(f"GUNICORN_CMD_ARGS does not parse: {e}")
    _apply_config_file(s, cli, env_args, environ, read_file, cpu_count, affinity)
    for name, value in env_args.items():
        s.set(name, value, "env")
    for name, value in cli.items():
        s.set(name, value, "cmdline")
    app_module = app or env_app or s.values.get("wsgi_app")
    s.app_module = str(app_module)[:MAX_STRING] if app_module else None
    return s


def evaluate_config(text: str, environ: dict[str, str] | None, cpu_count: int | None,
                    affinity: int | None) -> confeval.ConfigResult:
    return confeval.evaluate(text, names=DEFAULTS.keys(), environ=environ,
                             cpu_count=cpu_count, affinity=affinity)


def _apply_config_file(s: Settings, cli: dict, env_args: dict, environ, read_file,
                       cpu_count, affinity) -> None:
    explicit = cli.get("config") or env_args.get("config")
    if explicit is None and environ is None:
        return  # GUNICORN_CMD_ARGS may name a config file: everything is unknown already
    path = explicit or DEFAULTS["config"]
    if not isinstance(path, str) or read_file is None:
        if explicit:
            s.forget_all(f"config file {str(path)[:80]} was not read", keep=frozenset(cli) | frozenset(env_args))
        return
    if path.startswith("python:"):
        s.forget_all(f"config module {path[:80]} is Python code and is never imported",
                     keep=frozenset(cli) | frozenset(env_args))
        return
    try:
        text = read_file(path)
    except FileNotFoundError as e:
        if explicit:  # it was there when gunicorn started; what it said is not known now
            s.forget_all(f"config file {path[:80]}: {e.strerror or e}",
                         keep=frozenset(cli) | frozenset(env_args))
        return
    except OSError as e:
        s.forget_all(f"config file {path[:80]}: {e.strerror or e}",
                     keep=frozenset(cli) | frozenset(env_args))
        return
    if text is None:
        return
    if isinstance(text, confeval.ConfigResult):
        result = text  # evaluated (and cached) by the caller
    else:
        result = evaluate_config(text, environ, cpu_count, affinity)
    if not result.complete:
        s.forget_all(f"config file {path[:80]} could not be evaluated: "
                     + "; ".join(result.problems[:2]), keep=frozenset(cli) | frozenset(env_args))
        return
    for name, value in result.values.items():
        s.set(name, value, "config_file")
    for name in sorted(result.unknown):
        s.forget(name)
        s.note(f"config file: {name} is not a value the exporter can work out")
