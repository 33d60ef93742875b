"""Postgres, the parts that are not I/O: DSN handling (dsn.py) and what the queries'
rows become (model.py: named rows, server snapshots, attribution of backends to
gunicorn workers, connection budgets). The queries and the connections are in
exporter/collectors/postgres.py."""
