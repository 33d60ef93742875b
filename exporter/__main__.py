"""`python -m exporter` runs the exporter, like the `gunicorn-exporter` script."""

from exporter.cli import main

raise SystemExit(main())
