#!/usr/bin/env python3
"""Forwards to `python -m generate kubernetes` (the package generate/): kept because
deploy/kubernetes/prometheusrule.yaml names this file as the one that wrote it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from generate.__main__ import main  # noqa: E402

sys.exit(main(["kubernetes", *sys.argv[1:]]))
