"""python -m generate [all|rules|dashboard|kubernetes|mixin] [--check]: write the generated
files, or check that the committed ones are what would be written (exit 1 if not)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generate import dashboard, kubernetes, mixin, rules
from generate.output import write_or_check

# In this order: the PrometheusRule is made from the rule file written before it.
TARGETS = {"rules": rules, "dashboard": dashboard, "kubernetes": kubernetes, "mixin": mixin}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m generate", description=__doc__.split(":")[0])
    p.add_argument("target", nargs="?", default="all", choices=["all", *TARGETS])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a committed file is not what would be written")
    variant = p.add_argument_group("a variant of the rule file (tests), with the target rules")
    variant.add_argument("-o", "--output", type=Path, help="write it here instead")
    variant.add_argument("--for", dest="for_override", help="use this `for:` for every alert")
    variant.add_argument("--time-scale", type=float, help="multiply every duration by this")
    args = p.parse_args(argv)
    if args.target != "rules" and (args.output or args.for_override
                                     or args.time_scale is not None):
        p.error("-o, --for and --time-scale go with the target rules")
    fresh = True
    for name in TARGETS if args.target == "all" else [args.target]:
        try:
            texts = ({args.output or rules.OUTPUT: rules.render(None, args.for_override,
                                                                 args.time_scale)}
                     if name == "rules" else TARGETS[name].files() if name == "mixin"
                     else {TARGETS[name].OUTPUT: TARGETS[name].render()})
        except rules.ConfigError as exc:
            print(f"python -m generate {name}: {exc}", file=sys.stderr)
            return 2
        for path, text in texts.items():
            fresh &= write_or_check(path, text, args.check, f"python -m generate {name}")
    return 0 if fresh else 1


if __name__ == "__main__":
    sys.exit(main())
