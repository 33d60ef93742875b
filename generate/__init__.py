"""The generators: the files users load, written from one set of templates and tunables.

    python -m generate                    # rewrite every generated file
    python -m generate --check            # exit 1 if a committed file is not what this writes
    python -m generate rules|dashboard|kubernetes|mixin [--check]   # one of them

| file | written by | from |
|---|---|---|
| alerts/gunicorn.rules.yml | generate/rules.py | generate/recording.py, generate/alerts.py (generate/alerts_*.py), alerts/config.toml |
| grafana/dashboards/gunicorn.json | generate/dashboard.py | generate/panels.py, generate/rows.py, the alert thresholds |
| deploy/kubernetes/prometheusrule.yaml | generate/kubernetes.py | alerts/*.rules.yml |
| mixin/*.libsonnet (not mixin.libsonnet, dashboards.libsonnet), mixin/dashboards/gunicorn.json | generate/mixin.py | the rule templates with `_config` references, alerts/config.toml, the dashboard |

alerts/config.toml is the one place to tune the alerts (and so the dashboard's threshold
lines). The package is a development tool: it is not part of the installed `exporter`.
"""
