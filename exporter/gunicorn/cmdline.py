"""gunicorn's command line, read from outside: whether a process's argv runs gunicorn
(`gunicorn_args`), which settings its options give (`parse_args`, last wins as in
gunicorn's argparse), and the setproctitle titles of masters and workers
(`parse_title`). exporter/gunicorn/settings.py combines what these give with the
environment, the config file and the defaults.
"""

from __future__ import annotations

import os
import re

MAX_STRING = 4096   # the longest string taken from a master (an argument, a value)

# setting -> its options that take a value (gunicorn's `cli` of the setting)
OPTIONS: dict[str, tuple[str, ...]] = {
    "config": ("-c", "--config"),
    "bind": ("-b", "--bind"),
    "backlog": ("--backlog",),
    "workers": ("-w", "--workers"),
    "worker_class": ("-k", "--worker-class"),
    "threads": ("--threads",),
    "worker_connections": ("--worker-connections",),
    "timeout": ("-t", "--timeout"),
    "keepalive": ("--keep-alive",),
    "proc_name": ("-n", "--name"),
    "worker_tmp_dir": ("--worker-tmp-dir",),
    "max_requests": ("--max-requests",),
    "control_socket": ("--control-socket",),
}
VALUED = {option: name for name, options in OPTIONS.items() for option in options}
# the options gunicorn appends to a list (action="append"); every other one is last-wins
APPENDED = frozenset({"bind"})
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
            attached = bool(eq)                 # --opt=value
        else:
            opt, value = arg[:2], arg[2:]
            attached = bool(value)              # -ovalue, -o=value
            if value.startswith("="):
                value = value[1:]
        if opt in FLAGS:
            if FLAGS[opt]:
                found[FLAGS[opt]] = True
            continue
        if not attached:
            if i >= n:
                break
            value = args[i]
            i += 1
        name = VALUED.get(opt)
        if name is None:
            continue
        if name in APPENDED:
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
    if not argv or not argv[0].startswith("gunicorn: "):
        return None
    m = TITLE_RE.match(" ".join(argv)[:MAX_STRING + 64])
    if not m:
        return None
    return m.group(1), m.group(2)
