"""DSNs: their endpoint (host, port, dbname) as a label, their secrets, DSN files.
Nothing here ever puts a DSN or a password in a message."""

from __future__ import annotations

import os


def dsn_endpoint(dsn: str, environ: dict[str, str] | None = None) -> tuple[str, int, str]:
    """(host, port, dbname) of a DSN, libpq environment variables and defaults filled in.

    host is a name, an address, or a unix socket directory (starting with /). Raises
    ValueError with a message that does not contain the DSN.
    """
    from psycopg.conninfo import conninfo_to_dict
    env = os.environ if environ is None else environ
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise ValueError("not a valid connection string (libpq key=value or postgresql:// URI)") from None
    host = str(params.get("host") or params.get("hostaddr") or env.get("PGHOST")
               or env.get("PGHOSTADDR") or "localhost")
    port_text = str(params.get("port") or env.get("PGPORT") or "5432")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the port is not a number from 1 to 65535")
    user = str(params.get("user") or env.get("PGUSER") or _os_user())
    dbname = str(params.get("dbname") or env.get("PGDATABASE") or user)
    return host, int(port_text), dbname


def server_label(dsn: str, environ: dict[str, str] | None = None) -> str:
    """host:port/dbname of a DSN (libpq env variables and defaults filled in), no secrets.

    Raises ValueError with a message that does not contain the DSN.
    """
    host, port, dbname = dsn_endpoint(dsn, environ)
    if ":" in host and not host.startswith("/") and "," not in host:
        host = f"[{host}]"
    return f"{host}:{port}/{dbname}"


def dsn_secrets(dsn: str) -> list[str]:
    """Strings that must never be shown: the DSN itself and its password."""
    out = [dsn]
    try:
        from psycopg.conninfo import conninfo_to_dict
        pw = conninfo_to_dict(dsn).get("password")
        if pw:
            out.append(str(pw))
    except Exception:
        pass
    pw = os.environ.get("PGPASSWORD")
    if pw:
        out.append(pw)
    return [s for s in out if s]


def redact(text: str, secrets: list[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        if len(s) >= 1:
            text = text.replace(s, "***")
    return text


def read_dsn_file(path: str) -> list[str]:
    """One DSN per line; blank lines and lines starting with # are skipped."""
    with open(path, encoding="utf-8") as f:
        text = f.read(1 << 20)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _os_user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return "postgres"
