"""Every registered rule over one collection: `view_of` builds the rules' `View` from the
gunicorn, netstat and postgres collectors' data (and the collection before it),
`evaluate` runs the rules. A rule
that fails (a bug, a value it did not expect) costs its own findings only.
"""

from __future__ import annotations

import logging

from exporter.doctor import dbrules, rules
from exporter.doctor.model import (RULES, SEVERITIES, Facts, Finding, Thresholds, View)
from exporter.snapshot import GunicornSnapshot, HostSnapshot, PostgresSnapshot

log = logging.getLogger(__name__)
_REGISTERING = (dbrules, rules)   # importing them registers their rules in RULES
_failed: set[str] = set()   # rules whose failure was logged (once each)


def view_of(g: GunicornSnapshot, host: HostSnapshot | None = None,
            postgres: PostgresSnapshot | None = None, previous: GunicornSnapshot | None = None,
            interval: float | None = None, facts: Facts | None = None,
            thresholds: Thresholds | None = None) -> View:
    """The rules' view of a collection: the gunicorn collector's data, the netstat and
    postgres collectors' when they succeeded; `previous` is the gunicorn collector's data
    of an earlier collection, `interval` seconds before."""
    before = {}
    if previous is not None and previous is not g and interval and interval > 0:
        before = {a.app: a for a in previous.apps if a.up}
    return View(apps=[a for a in g.apps if a.up and a.master_pid], host=host,
                postgres=postgres, socket_source=g.socket_source, previous=before,
                interval=interval if before else None,
                facts=facts or Facts(), t=thresholds or Thresholds())


def evaluate(view: View) -> list[Finding]:
    """Findings of every rule, critical first, then by app, catalogue ID and rule."""
    out: list[Finding] = []
    for name, (_ids, fn) in RULES.items():
        try:
            found = list(fn(view))
        except Exception as e:  # noqa: BLE001 - one broken rule costs itself only
            if name not in _failed:
                _failed.add(name)
                log.warning("doctor rule %s failed: %r", name, e, exc_info=True)
            continue
        out.extend(found)
    out.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.app, f.id, f.rule))
    return out
