#!/usr/bin/env python3
"""Forwards to `python -m generate dashboard` (the package generate/): kept because
grafana/dashboards/gunicorn.json names this file as the one that wrote it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generate.__main__ import main  # noqa: E402

sys.exit(main(["dashboard", *sys.argv[1:]]))
