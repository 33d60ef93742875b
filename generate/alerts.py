"""The alert templates of alerts/gunicorn.rules.yml, in file order: what each alert
watches (its expression), says (summary, description) and covers (the failure mode IDs
of docs/failure-modes.md). Placeholders ``@{name}`` are filled from alerts/config.toml
(generate/rules.py says how); a threshold that is no tunable is in the alert's `fixed`.

The groups live in one module per subject, each a list of (group, alerts) in file order:

| module | groups |
|---|---|
| generate/alerts_pool.py | gunicorn.workers, gunicorn.dependencies |
| generate/alerts_limits.py | gunicorn.timeouts, gunicorn.listeners, gunicorn.connections |
| generate/alerts_resources.py | gunicorn.database, gunicorn.memory |
| generate/alerts_service.py | gunicorn.requests, gunicorn.exporter |

What they are made of (`Alert`, shared expressions): generate/alerts_common.py.
"""

from __future__ import annotations

from generate import alerts_limits, alerts_pool, alerts_resources, alerts_service
from generate.alerts_common import Alert

GROUPS: list[tuple[str, list[Alert]]] = [
    *alerts_pool.GROUPS, *alerts_limits.GROUPS, *alerts_resources.GROUPS,
    *alerts_service.GROUPS]


def alerts_table() -> list[tuple[str, str]]:
    """[(alert name, insight IDs)] for docs and tests."""
    return [(a.name, a.insights) for _, alerts in GROUPS for a in alerts]


def fixed_thresholds() -> dict[str, dict]:
    """{alert: {parameter: value}}: thresholds built into a rule instead of config.toml."""
    return {a.name: dict(a.fixed) for _, alerts in GROUPS for a in alerts if a.fixed}
