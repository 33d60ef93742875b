"""The command line and environment a test's gunicorn master starts with (pure: what
`tests.harness.masters.Gunicorn.start` runs), and where its pieces live."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

TESTS_DIR = Path(__file__).resolve().parent.parent
APPS_DIR = TESTS_DIR / "apps"
NO_SETPROCTITLE_DIR = APPS_DIR / "no_setproctitle"
VENV_BIN = Path(sys.executable).parent
GUNICORN_SCRIPT = VENV_BIN / "gunicorn"


def command(binds: list[str], *, worker_class: str, workers: int | None, threads: int | None,
            worker_connections: int | None, timeout: int, graceful_timeout: int,
            name: str | None, extra_args: Iterable[str], env: dict | None,
            setproctitle: bool, invoke: str, app: str, private_tmpdir: Path | None,
            control_socket: Path | None, run_as, prefix: Sequence[str], log_path: Path
            ) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a master serving `app` from tests/apps on `binds`.

    graceful_timeout: --graceful-timeout; 1 s (gunicorn's default is 30) so that
          stop() of a master with requests in flight takes about a second. A test
          that needs the in-flight requests to finish on SIGTERM passes more.
    invoke: 'script' runs <venv>/bin/gunicorn, 'module' runs ``python -m gunicorn``.
    private_tmpdir: a directory to set TMPDIR to (created here). gunicorn 27 keeps the
          dirty arbiter pidfile at $TMPDIR/gunicorn-dirty-<proc_name>.pid and kills the
          "orphan" it names on start, so parallel masters with dirty workers and the
          same proc_name must not share TMPDIR. (Also moves the worker heartbeat tmp
          files.)
    control_socket: the --control-socket path; None leaves gunicorn's default
          ($XDG_RUNTIME_DIR or $HOME/.gunicorn/gunicorn.ctl, shared by every master of
          a user: set HOME in ``env``).
    setproctitle: False hides the setproctitle module (tests/apps/no_setproctitle).
    prefix: e.g. `unshare --net ...`, a command that execs the rest (same pid).
    """
    python, python_env = sys.executable, {}
    if run_as is not None:
        from tests.hostile import interpreter
        python, python_env = interpreter()
    if invoke == "script":
        argv = [str(GUNICORN_SCRIPT)]
    elif invoke == "module":
        argv = [python, "-m", "gunicorn"]
    else:
        raise ValueError("invoke must be 'script' or 'module'")
    argv += ["--chdir", str(APPS_DIR), "--worker-class", worker_class]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv += ["--timeout", str(timeout), "--graceful-timeout", str(graceful_timeout),
             "--error-logfile", str(log_path), "--log-level", "info"]
    if control_socket is not None:
        argv += ["--control-socket", str(control_socket)]
    for b in binds:
        argv += ["--bind", b]
    if threads is not None:
        argv += ["--threads", str(threads)]
    if worker_connections is not None:
        argv += ["--worker-connections", str(worker_connections)]
    if name is not None:
        argv += ["--name", name]
    argv += list(extra_args)
    argv.append(app)
    argv = [*prefix, *argv]

    penv = dict(os.environ)
    penv.pop("GUNICORN_CMD_ARGS", None)
    penv.pop("WEB_CONCURRENCY", None)
    pypath = [str(APPS_DIR)]
    if not setproctitle:
        pypath.insert(0, str(NO_SETPROCTITLE_DIR))
    if penv.get("PYTHONPATH"):
        pypath.append(penv["PYTHONPATH"])
    if python_env.get("PYTHONPATH"):
        pypath.append(python_env["PYTHONPATH"])
    penv["PYTHONPATH"] = os.pathsep.join(pypath)
    if run_as is not None:
        penv["HOME"] = str(run_as.home)
    if control_socket is None:
        penv.pop("XDG_RUNTIME_DIR", None)  # so the default is $HOME/.gunicorn/...
    penv["PYTHONUNBUFFERED"] = "1"
    if private_tmpdir is not None:
        private_tmpdir.mkdir(exist_ok=True)
        penv["TMPDIR"] = str(private_tmpdir)
    if env:
        penv.update(env)
    return argv, penv
