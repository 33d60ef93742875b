"""Render alerts/gunicorn.rules.yml (Prometheus recording and alerting rules) from the
templates of generate/recording.py and generate/alerts.py and the tunables in
alerts/config.toml.

Why a generator: the same job selector appears in every expression and each threshold
in both an expression and its description. Keeping them in one TOML file (read with the
standard library's tomllib, the format of the exporter's own config file) means a change
is one edit, and the rendered YAML (generate/output.py's `dump_yaml`) stays plain
Prometheus rules that anyone can read, `promtool check rules` and load without this
package.

    python -m generate rules              # rewrite alerts/gunicorn.rules.yml
    python -m generate rules --check      # exit 1 if the committed file is stale
    python -m generate rules --for 2s -o /tmp/x.yml   # every `for:` replaced (tests)

Placeholders are string.Template ones with ``@`` as the delimiter (``$`` and ``{{ }}``
belong to Prometheus' templates: ``{{ $labels.app }}``): ``@{name}`` is the value of
``name`` in the alert's [table] of config.toml, else in the alert's ``fixed`` thresholds,
else in [global]; ``@{name_pct}`` renders the ratio ``name`` as a percentage; ``@@`` is a
literal ``@``. Unknown or unused config keys are errors, so the two files cannot drift
apart.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Callable
from pathlib import Path

from generate.alerts import GROUPS
from generate.alerts_common import Alert
from generate.output import ALERTS_DIR, Literal, dump_yaml
from generate.recording import RECORDING_RULES

CONFIG = ALERTS_DIR / "config.toml"
OUTPUT = ALERTS_DIR / "gunicorn.rules.yml"

_RANGE = re.compile(r"\[(\w+)(:\w*)?\]")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
SCALED_KEYS = {"horizon_seconds"}   # config values that are durations of observation
_DURATION = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")
_META_KEYS = {"for", "keep_firing_for", "severity"}


class ConfigError(ValueError):
    pass


Ref = Callable[[str, str, object, bool], str]


def load_config(path: Path = CONFIG) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else str(value)
    return str(value)


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration ('90s', '1h30m', '0m')."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        if text == "0":
            return 0.0
        raise ConfigError("%r is not a duration" % text)
    return sum(int(n) * _UNIT[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 1000:
        return "%dms" % ms
    return "%ds" % (ms // 1000)


def scale_durations(expr: str, factor: float) -> str:
    """Every range and subquery duration in a PromQL expression times `factor`
    (at least 1 s): `[5m]` -> `[20s]` for 1/15."""
    def one(m):
        window, step = m.group(1), m.group(2)
        out = "[" + format_duration(max(1.0, parse_duration(window) * factor))
        if step is not None:
            out += ":" + (format_duration(max(1.0, parse_duration(step[1:]) * factor))
                          if len(step) > 1 else "")
        return out + "]"
    return _RANGE.sub(one, expr)


class _Template(string.Template):
    """`@{name}`: PromQL has no `@{`, and `$`, `{{ }}` are Prometheus' templating."""
    delimiter = "@"


def _substitute(text: str, table: dict, glob: dict, used: set, where: str,
                fixed: dict | None = None, ref: Ref | None = None) -> str:
    """`text` with its placeholders filled in; the keys of `table` it reads go to `used`.
    With `ref`, each placeholder is filled with what `ref(scope, key, value, pct)` returns
    instead (scope "table", "fixed" or "global"; `pct`: the ratio as a percentage):
    generate/mixin.py turns them into references to the mixin's `_config`."""
    template = _Template(text)
    if not template.is_valid():
        raise ConfigError("%s: a stray '@' in %r (write '@@' for a literal one)" % (where, text))
    sources = (("table", table), ("fixed", fixed or {}), ("global", glob))

    def lookup(key: str):
        for scope, source in sources:
            if key in source:
                if scope == "table":
                    used.add(key)
                return scope, source[key]
        raise ConfigError("%s: no %r in alerts/config.toml" % (where, key))

    values = {}
    for name in template.get_identifiers():
        pct = name.endswith("_pct") and not any(name in source for _, source in sources)
        key = name[:-len("_pct")] if pct else name   # name_pct: the ratio `name` as a percentage
        scope, value = lookup(key)
        if ref is not None:
            values[name] = ref(scope, key, value, pct)
        else:
            values[name] = "%g%%" % (float(value) * 100) if pct else _fmt(value)
    return template.substitute(values)


def _scaled_config(config: dict, time_scale: float) -> dict:
    """A copy of `config` whose durations of observation (SCALED_KEYS) are scaled."""
    config = {name: dict(table) for name, table in config.items()}
    for name, table in config.items():
        for key in SCALED_KEYS & set(table):
            table[key] = max(1, round(table[key] * time_scale))
    return config


def _check_tables(config: dict) -> dict:
    """[global] of `config`, once the tables it has are the alerts' and [global]."""
    glob = config.get("global", {})
    for key in ("selector", "runbook_url"):
        if key not in glob:
            raise ConfigError("[global] needs %r" % key)
    names = [a.name for _, alerts in GROUPS for a in alerts]
    unknown = set(config) - set(names) - {"global"}
    if unknown:
        raise ConfigError("config.toml has tables for unknown alerts: %s" % sorted(unknown))
    return glob


def _check_alert_table(a: Alert, table: dict | None) -> dict:
    if table is None:
        raise ConfigError("config.toml has no [%s] table" % a.name)
    for key in ("for", "severity"):
        if key not in table:
            raise ConfigError("[%s] needs %r" % (a.name, key))
    if table["severity"] not in ("critical", "warning"):
        raise ConfigError("[%s] severity must be critical or warning" % a.name)
    for key in ("for", "keep_firing_for"):
        if key in table and not _DURATION.match(str(table[key])):
            raise ConfigError("[%s] %s = %r is not a duration" % (a.name, key, table[key]))
    fixed = set(table) & set(a.fixed)
    if fixed:
        raise ConfigError("[%s] sets %s, which its rule fixes (generate/alerts.py)"
                          % (a.name, sorted(fixed)))
    return table


def _alert_rule(a: Alert, table: dict, glob: dict, for_override: str | None,
                time_scale: float | None, ref: Ref | None = None) -> dict:
    """The rule dict of alert `a` with its config.toml `table`."""
    used: set = set()
    expr = _substitute(a.expr, table, glob, used, a.name, a.fixed, ref)
    for_ = for_override or table["for"]
    keep = table.get("keep_firing_for")
    if time_scale is not None:
        expr = scale_durations(expr, time_scale)
        for_ = format_duration(parse_duration(for_) * time_scale)
        if keep is not None:
            keep = format_duration(parse_duration(keep) * time_scale)
    rule = {
        "alert": a.name,
        "expr": expr,
        "for": for_,
        **({"keep_firing_for": keep} if keep is not None else {}),
        "labels": {"severity": table["severity"], **a.extra_labels},
        "annotations": {
            "summary": _substitute(a.summary, table, glob, used, a.name, a.fixed, ref),
            "description": _substitute(a.description, table, glob, used, a.name, a.fixed, ref),
            "runbook_url": "%s#%s" % (glob["runbook_url"], a.name.lower()),
        },
    }
    unused = set(table) - used - _META_KEYS
    if unused:
        raise ConfigError("[%s] sets %s, which its rule does not use" % (a.name, sorted(unused)))
    return rule


def build_rules(config: dict, for_override: str | None = None, time_scale: float | None = None,
                ref: Callable[[str], Ref] | None = None) -> list[tuple[str, list[dict]]]:
    """[(group name, [rule dict])] in file order.

    time_scale: multiply every duration (`for:`, range windows, the prediction horizon)
    by this factor, e.g. 1/15 to run the rules against an exporter scraped every second
    instead of every 15 s (tests/test_alerts_faults.py): the same alerts fire on the
    same samples, 15 times sooner.
    ref: for each rule's name, the `ref` of `_substitute` (generate/mixin.py)."""
    if time_scale is not None:
        config = _scaled_config(config, time_scale)
    glob = _check_tables(config)
    rec = []
    for record, expr in RECORDING_RULES:
        expr = _substitute(expr, {}, glob, set(), record, ref=ref and ref(record))
        rec.append({"record": record,
                    "expr": scale_durations(expr, time_scale) if time_scale else expr})
    groups = [("gunicorn.rules", rec)]
    for group, alerts in GROUPS:
        groups.append((group, [
            _alert_rule(a, _check_alert_table(a, config.get(a.name)), glob, for_override,
                        time_scale, ref and ref(a.name))
            for a in alerts]))
    return groups


HEADER = """\
# Generated by `python -m generate rules` from alerts/config.toml: edit that, not this file.
# Runbooks: docs/runbooks.md. Tests: tests/test_alerts.py, alerts/tests/.
"""


def to_yaml(groups: list[tuple[str, list[dict]]]) -> str:
    """The rule file: every expression as a literal block."""
    return dump_yaml({"groups": [
        {"name": name, "rules": [dict(r, expr=Literal(r["expr"])) for r in rules]}
        for name, rules in groups]}, HEADER)


def render(config: dict | None = None, for_override: str | None = None,
           time_scale: float | None = None) -> str:
    return to_yaml(build_rules(load_config() if config is None else config, for_override,
                               time_scale))
