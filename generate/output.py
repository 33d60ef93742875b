"""What the generators share: where the repository is, the one YAML writer, and
writing a generated file or checking that the committed one is what would be written."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = ROOT / "alerts"


class Literal(str):
    """A string `dump_yaml` always writes as a literal block (`|-`): PromQL expressions."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)  # list items indented under their key


def _represent_str(dumper: yaml.SafeDumper, value: str):
    literal = isinstance(value, Literal) or "\n" in value
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if literal else None)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(Literal, _represent_str)


def dump_yaml(data, header: str = "") -> str:
    """`data` as block YAML after the comment lines `header`: keys in insertion order,
    multi-line strings and `Literal`s as literal blocks, no line folding. The one YAML
    writer of the generators (the rule file and the PrometheusRule)."""
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000,
                              allow_unicode=True, default_flow_style=False)


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_or_check(path: Path, text: str, check: bool, command: str) -> bool:
    """Write `text` to `path`, or with `check` only compare: False when the file is not
    `text` (said on stderr, with the `command` that rewrites it)."""
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{shown(path)} is stale: run {command}", file=sys.stderr)
            return False
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {shown(path)}")
    return True
