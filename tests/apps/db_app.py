"""WSGI app that holds Postgres connections, for the postgres collector tests.

Configuration by environment (read in the worker, after fork):
    DB_URL        SQLAlchemy URL (postgresql+psycopg://...)
    DB_DSN        libpq DSN for the per-request route (/gevent/hold)
    POOL_SIZE, MAX_OVERFLOW, POOL_TIMEOUT   the QueuePool (defaults 2, 1, 1)

Every connection says which worker opened it: application_name = "dbapp-<pid>".

Routes:
    /pid                       -> the worker's pid
    /db/hold?n=K&seconds=S     -> check out K pooled connections at once (SELECT 1 on
                                  each), hold them S seconds, give them back. When the
                                  pool is exhausted: 503 with SQLAlchemy's message
                                  ("QueuePool limit of size N overflow M reached, ...").
    /gevent/hold?seconds=S     -> a fresh psycopg connection for this request (one per
                                  green thread: the C6 anti-pattern), held S seconds.
    /db/sleep?seconds=S        -> a fresh psycopg connection whose query waits S seconds
                                  in the server (SELECT pg_sleep): a slow dependency.
"""

import os
import threading

from wsgi_app import _hold, _param, _respond  # same query parsing, waits and answers as the main test app

_engine = None
_lock = threading.Lock()


def _appname():
    return "dbapp-%d" % os.getpid()


def engine():
    global _engine
    with _lock:
        if _engine is None:
            import sqlalchemy
            _engine = sqlalchemy.create_engine(
                os.environ["DB_URL"],
                pool_size=int(os.environ.get("POOL_SIZE", "2")),
                max_overflow=int(os.environ.get("MAX_OVERFLOW", "1")),
                pool_timeout=float(os.environ.get("POOL_TIMEOUT", "1")),
                connect_args={"application_name": _appname()})
        return _engine


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/") or "/"
    if path == "/pid":
        return _respond(start_response, str(os.getpid()))
    if path == "/db/hold":
        import sqlalchemy
        n = _param(environ, "n", 1, 50, conv=int)
        seconds = _param(environ, "seconds", 0.0, 60.0)
        conns = []
        try:
            for _ in range(n):
                c = engine().connect()
                conns.append(c)
                c.execute(sqlalchemy.text("SELECT 1"))
            _hold(seconds)
        except sqlalchemy.exc.TimeoutError as e:
            return _respond(start_response, "pool exhausted: %s" % e, "503 Service Unavailable")
        finally:
            for c in conns:
                c.close()
        return _respond(start_response, "held %d pid=%d" % (n, os.getpid()))
    if path == "/gevent/hold":
        import psycopg
        seconds = _param(environ, "seconds", 1.0, 60.0)
        with psycopg.connect(os.environ["DB_DSN"], application_name=_appname(),
                             connect_timeout=10) as c:
            c.execute("SELECT 1")
            _hold(seconds)
        return _respond(start_response, "held 1 pid=%d" % os.getpid())
    if path == "/db/sleep":
        import psycopg
        seconds = _param(environ, "seconds", 1.0, 60.0)
        with psycopg.connect(os.environ["DB_DSN"], application_name=_appname(),
                             connect_timeout=10) as c:
            c.execute("SELECT pg_sleep(%s)", (seconds,))   # the server answers after S
        return _respond(start_response, "slept %s pid=%d" % (seconds, os.getpid()))
    return _respond(start_response, "not found", "404 Not Found")


application = app
