"""What the alert templates (generate/alerts.py) are made of: the `Alert` record and the
expressions several alerts share. Placeholders ``@{name}`` are filled from
alerts/config.toml (generate/rules.py says how)."""

from __future__ import annotations

from dataclasses import dataclass, field

# gunicorn_info's own labels: `ignoring` them joins it with an app's series
INFO = "version, worker_class, user"


@dataclass
class Alert:
    name: str
    insights: str          # IDs of docs/failure-modes.md, for docs and the coverage test
    expr: str
    summary: str
    description: str
    extra_labels: dict = field(default_factory=dict)
    # thresholds built into the rule, not tunable in config.toml (the dashboard draws them)
    fixed: dict = field(default_factory=dict)


def log_events(signatures: str, window: str = "@{window}") -> str:
    return ("sum without (signature) (increase(gunicorn_log_events_total{@{selector},"
            " signature=~\"%s\"}[%s]))" % (signatures, window))


def ratio_or_count(access_errors: str, log_errors: str) -> str:
    """Errors per answered request when an access log shows enough of them (its
    `http_response` lines; the errors counted there too), else a count of error lines
    in any log: the one expression both proxy alerts use. A failed request is in both
    nginx logs; the ratio reads the access log only, so it is never counted twice."""
    responses = log_events("http_response")
    return ("(\n  %s\n  / (%s > @{min_responses})\n) > @{error_ratio}\n"
            "or\n(\n  %s > @{events}\n  unless %s > @{min_responses}\n)"
            % (log_events(access_errors), responses, log_events(log_errors), responses))

