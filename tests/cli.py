"""The command line run in-process, for the fast tests of its messages and exit codes:
`run_cli(*args)` calls `exporter.cli.main(args)` (what `python -m exporter` and the
`gunicorn-exporter` script run) with stdout and stderr captured, and returns what
`subprocess.run` would: the exit status, stdout and stderr. An exception other than
SystemExit propagates (a subprocess would print a traceback and exit 1): the test fails.

Only for arguments that make main() return or exit (errors, --help); the tests that
start the real program (`python -m exporter`) are marked slow."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from exporter.cli import main


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level    # main() calls logging.basicConfig
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return CliResult(code, out.getvalue(), err.getvalue())
