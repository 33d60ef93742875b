"""Shadow module: put this directory first on PYTHONPATH to make
``import setproctitle`` fail, so gunicorn keeps the original argv as the
process title (gunicorn.util falls back to a no-op _setproctitle)."""

raise ImportError("setproctitle disabled by tests/apps/no_setproctitle")
