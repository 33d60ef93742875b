"""gunicorn-exporter: a Prometheus exporter that watches gunicorn from outside."""

__version__ = "0.1.0"
