"""Which log files to follow: `--logs.file [APP=]PATH`."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LogFile:
    path: str
    app: str | None = None


def parse_log_file(value) -> LogFile:
    """`[APP=]PATH` (or a {app, path} table from the config file)."""
    if isinstance(value, dict):
        app, path = value.get("app"), value.get("path")
    else:
        text = str(value)
        app, sep, path = text.partition("=")
        if not sep or app.startswith("/"):
            app, path = None, text
    path = str(path or "").strip()
    if not path.startswith("/"):
        raise ValueError(f"{value!r}: the log file must be an absolute path ([APP=]PATH)")
    if app is not None:
        app = str(app).strip()
        if not app or not re.fullmatch(r"[^\s=]{1,128}", app):
            raise ValueError(f"{value!r}: bad app name before '='")
    return LogFile(path=path, app=app)
