"""Work out a gunicorn master's effective settings without running any of its code.

Sources, lowest priority first (gunicorn's own order):
  1. gunicorn's defaults (`DEFAULTS` below, as of gunicorn 23-27);
  2. the config file (`-c/--config`, default `./gunicorn.conf.py` in the master's cwd),
     read statically: only module-level `name = <literal>` assignments count;
  3. `GUNICORN_CMD_ARGS` from the master's environment;
  4. the command line;
  5. the control socket's `show config` answer, when the master runs one
     (merged by the collector, see `exporter/gunicorn/control.py`): this is what the
     running master really uses, so it wins.

Every value remembers where it came from (`Settings.sources`) so the docs and the
`gunicorn_setting_source_info` series can say so. A setting none of these reveal keeps
gunicorn's default and is marked `default`.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from dataclasses import dataclass, field

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
}

# option -> setting name, for the options that take a value
VALUED: dict[str, str] = {
    "-c": "config", "--config": "config",
    "-b": "bind", "--bind": "bind",
    "--backlog": "backlog",
    "-w": "workers", "--workers": "workers",
    "-k": "worker_class", "--worker-class": "worker_class",
    "--threads": "threads",
    "--worker-connections": "worker_connections",
    "-t": "timeout", "--timeout": "timeout",
    "--keep-alive": "keepalive",
    "-n": "proc_name", "--name": "proc_name",
    "--worker-tmp-dir": "worker_tmp_dir",
    "--max-requests": "max_requests",
    "--control-socket": "control_socket",
}
# gunicorn's store_true/store_const options (they take no value). Any other option is
# assumed to take one, which is what all other gunicorn options do.
FLAGS: dict[str, str | None] = {
    "--reuse-port": "reuse_port", "--no-control-socket": "control_socket_disable",
    "--reload": None, "--spew": None, "--check-config": None, "--print-config": None,
    "--preload": None, "--no-sendfile": None, "-D": None, "--daemon": None,
    "--initgroups": None, "--disable-redirect-access-to-syslog": None,
    "--capture-output": None, "--log-syslog": None, "-R": None,
    "--enable-stdio-inheritance": None, "--enable-backlog-metric": None,
    "--suppress-ragged-eofs": None, "--do-handshake-on-connect": None,
    "--permit-obsolete-folding": None, "--strip-header-spaces": None,
    "--permit-unconventional-http-method": None,
    "--permit-unconventional-http-version": None, "--casefold-http-method": None,
    "-v": None, "--version": None, "-h": None, "--help": None,
}
INT_SETTINGS = {"workers", "threads", "worker_connections", "timeout", "keepalive",
                "backlog", "max_requests"}
LIST_SETTINGS = {"bind"}

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
        return self.values.get(name)

    def set(self, name: str, value: object, source: str) -> None:
        try:
            if name in INT_SETTINGS:
                value = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.problems.append(f"{source}: {name}={value!r} is not an integer")
            return
        if name in LIST_SETTINGS and isinstance(value, str):
            value = [value]
        self.values[name] = value
        self.sources[name] = source

    @property
    def worker_class(self) -> str:
        return normalise_worker_class(str(self.values.get("worker_class") or "sync"))


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


def parse_args(args: list[str]) -> tuple[dict[str, object], str | None]:
    """Parse gunicorn command-line arguments (after the program name).

    Returns (settings given, app argument). `bind` accumulates; everything else is
    last-wins, like argparse.
    """
    found: dict[str, object] = {}
    positionals: list[str] = []
    i = 0
    n = len(args)
    while i < n:
        arg = args[i]
        i += 1
        if arg == "--":
            positionals.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        if arg.startswith("--"):
            opt, eq, value = arg.partition("=")
            if opt in FLAGS:
                if FLAGS[opt]:
                    found[FLAGS[opt]] = True
                continue
            if not eq:
                if i >= n:
                    break
                value = args[i]
                i += 1
        else:
            opt = arg[:2]
            if opt in FLAGS:
                if FLAGS[opt]:
                    found[FLAGS[opt]] = True
                continue
            value = arg[2:]
            if not value:
                if i >= n:
                    break
                value = args[i]
                i += 1
            elif value.startswith("="):
                value = value[1:]
        name = VALUED.get(opt)
        if name is None:
            continue
        if name in LIST_SETTINGS:
            found.setdefault(name, [])
            found[name].append(value)  # type: ignore[union-attr]
        else:
            found[name] = value
    app = positionals[-1] if positionals else None
    return found, app


def gunicorn_args(argv: list[str]) -> list[str] | None:
    """The gunicorn arguments inside a process's argv, or None if it is not gunicorn.

    Recognises `gunicorn ...`, `/venv/bin/gunicorn ...`, `python /venv/bin/gunicorn ...`,
    `python -m gunicorn ...` (also `-mgunicorn`, `-m gunicorn.app.wsgiapp`) with
    interpreter options before `-m`.
    """
    if not argv:
        return None
    if _is_gunicorn_script(argv[0]):
        return argv[1:]
    if not _is_python(argv[0]):
        return None
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "-m" and i + 1 < len(argv):
            return argv[i + 2:] if _is_gunicorn_module(argv[i + 1]) else None
        if a.startswith("-m") and len(a) > 2:
            return argv[i + 1:] if _is_gunicorn_module(a[2:]) else None
        if a in ("-c",):
            return None
        if a in ("-W", "-X", "-Q"):  # interpreter options with a separate value
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        return argv[i + 1:] if _is_gunicorn_script(a) else None
    return None


def _is_gunicorn_script(path: str) -> bool:
    return os.path.basename(path) in ("gunicorn", "gunicorn3")


def _is_python(path: str) -> bool:
    base = os.path.basename(path)
    return base.startswith("python") or base.startswith("pypy")


def _is_gunicorn_module(mod: str) -> bool:
    return mod in ("gunicorn", "gunicorn.app.wsgiapp")


TITLE_RE = re.compile(r"^gunicorn: (master|worker|dirty-arbiter|dirty-worker)(?: \[(.*)\])?")


def parse_title(argv: list[str]) -> tuple[str, str | None] | None:
    """setproctitle titles: ('master', name), ('worker', name), ('dirty-arbiter', None) ..."""
    if not argv:
        return None
    m = TITLE_RE.match(" ".join(argv))
    if not m:
        return None
    return m.group(1), m.group(2)


def read_config_file(text: str) -> tuple[dict[str, object], list[str]]:
    """Static read of a gunicorn.conf.py: module-level `name = literal` assignments only.

    Nothing is executed. Names that are not plain literals (computed values, imports)
    are reported in the second element so the docs/logs can say what was not known.
    """
    found: dict[str, object] = {}
    skipped: list[str] = []
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as e:
        return {}, [f"config file does not parse: {e}"]
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        name = target.id
        if name == "worker_class" or name in DEFAULTS:
            try:
                found[name] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                skipped.append(name)
    return found, skipped


def resolve(argv_args: list[str], environ: dict[str, str] | None,
            read_file=None) -> Settings:
    """Combine defaults, config file, GUNICORN_CMD_ARGS and the command line.

    `read_file(path) -> str` reads a config file in the master's view of the file
    system (relative paths are the caller's business); None means "cannot read".
    """
    s = Settings()
    cli, app = parse_args(argv_args)
    env_args: dict[str, object] = {}
    env_app = None
    if environ and environ.get("GUNICORN_CMD_ARGS"):
        try:
            env_args, env_app = parse_args(shlex.split(environ["GUNICORN_CMD_ARGS"]))
        except ValueError as e:
            s.problems.append(f"GUNICORN_CMD_ARGS does not parse: {e}")
    config_path = cli.get("config") or env_args.get("config") or DEFAULTS["config"]
    explicit_config = "config" in cli or "config" in env_args
    if read_file is not None and isinstance(config_path, str) \
            and not config_path.startswith("python:"):
        try:
            text = read_file(config_path)
        except OSError as e:
            if explicit_config:
                s.problems.append(f"config file {config_path}: {e.strerror or e}")
        else:
            if text is not None:
                file_values, skipped = read_config_file(text)
                for name, value in file_values.items():
                    s.set(name, value, "config_file")
                for name in skipped:
                    s.problems.append(f"config file: {name} is not a literal; not known")
    for name, value in env_args.items():
        s.set(name, value, "env")
    for name, value in cli.items():
        s.set(name, value, "cmdline")
    s.app_module = app or env_app
    return s
