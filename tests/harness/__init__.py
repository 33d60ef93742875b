"""Test harness for gunicorn-exporter, one module per job:

* `procs`: `poll` (wait for a condition with a deadline), free ports, /proc of the
  processes the tests started, `unique_name` for apps on a crowded host;
* `masters` (and `command`, its command line): real gunicorn masters;
* `clients`: raw HTTP clients on unix and TCP sockets, `SlowClients`;
* `ss`: the `ss` oracle, which shares no code with the exporter;
* `servers`: other servers and the exporter itself (`running_exporter`).

Rules every module follows (project rules):
  * real gunicorn masters, started from this venv;
  * no sleeping as synchronisation: ``poll()`` a condition with a deadline;
  * servers bind to 127.0.0.1 / ::1 / unix sockets in temporary dirs only;
  * only processes started here are signalled, by PID, after checking the
    PID still names the same process (start time from /proc/<pid>/stat);
  * every loop is bounded (deadline or fixed iteration count).
"""
