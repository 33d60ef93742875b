"""Configuration advice: `gunicorn-exporter doctor` and the daemon's `gunicorn_advice`.

    model.py     findings, thresholds, host facts, the rule registry (`@rule`)
    rules.py     rules over settings, processes and the kernel (W11, W8, C3/W9, W10, W1,
                 W2/I3, the shared control socket)
    dbrules.py   rules over database connections (C6, C5)
    facts.py     host facts the collectors do not measure (CPUs, control sockets, nginx, Caddy)
    nginx.py     nginx's proxy_read_timeout, read statically from its config files
    caddy.py     Caddy's reverse_proxy timeouts, read statically from a Caddyfile
    evaluate.py  the collectors' data -> the rules' View -> findings
    main.py      the command line

The daemon runs the same rules on every scrape: the `advice` collector
(exporter/collectors/advice.py).

docs/doctor.md describes every rule; a new rule is one decorated function.
"""
