"""A throwaway Postgres cluster for the tests.

`PgCluster.start()` runs initdb and the postmaster (as the `postgres` OS user when the
tests run as root) in a fresh temp dir, on a free 127.0.0.1 port with its own unix
socket dir and a low max_connections. The postmaster is our direct child: it is
stopped, paused (SIGSTOP) and resumed by its PID only, after checking the PID still
names the process we started. Roles:

  postgres   superuser            (`dsn()`; also over the unix socket: `unix_dsn()`)
  monitor    member of pg_monitor (`dsn("monitor")`)
  nopriv     no privileges        (`dsn("nopriv")`)
  app        owner of the apps' connections (`dsn("app")`)

Every role's password is PASSWORD. Nothing here sleeps to synchronise; every wait
polls with a deadline.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

from tests.harness.procs import free_port, pid_alive, poll, proc_children, proc_stat

BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
PASSWORD = "s3cret-pw-7f1"
ROLES = ("monitor", "nopriv", "app")


def find_bin(name: str) -> str | None:
    for d in BIN_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return shutil.which(name)


def available() -> tuple[bool, str]:
    missing = [n for n in ("initdb", "postgres") if find_bin(n) is None]
    if missing:
        return False, "Postgres server binaries not found: " + ", ".join(missing)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False, "running as root but there is no 'postgres' OS user to run the server"
    return True, ""


@dataclass
class PgCluster:
    base: str
    port: int
    proc: subprocess.Popen | None = None
    starttime: int | None = None
    paused: list = field(default_factory=list)   # (pid, starttime) we SIGSTOPped

    @property
    def datadir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def sockdir(self) -> str:
        return os.path.join(self.base, "s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, max_connections: int = 40) -> "PgCluster":
        base = tempfile.mkdtemp(prefix="gx-pg-")
        os.chmod(base, 0o755)
        os.makedirs(os.path.join(base, "s"))
        user = _run_as()
        if user is not None:
            for p in (base, os.path.join(base, "s")):
                os.chown(p, user.pw_uid, user.pw_gid)
        pwfile = os.path.join(base, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        c = cls(base=base, port=free_port())
        try:
            _run([find_bin("initdb"), "-D", c.datadir, "-U", "postgres", "--pwfile", pwfile,
                  "-A", "scram-sha-256", "--auth-local", "trust", "-E", "UTF8",
                  "--no-sync", "--locale", "C"], user, timeout=60)
            with open(os.path.join(c.datadir, "postgresql.conf"), "a") as f:
                f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {c.port}\n"
                        f"unix_socket_directories = '{c.sockdir}'\n"
                        f"max_connections = {max_connections}\n"
                        "shared_buffers = 16MB\nfsync = off\nsynchronous_commit = off\n"
                        "full_page_writes = off\nlogging_collector = off\n")
            c.run()
            c.sql(";".join(
                [f"CREATE ROLE {r} LOGIN PASSWORD '{PASSWORD}'" for r in ROLES]
                + ["GRANT pg_monitor TO monitor", "CREATE DATABASE appdb OWNER app"]))
        except BaseException:
            c.stop()
            raise
        return c

    def run(self, timeout: float = 30.0) -> None:
        """Start the postmaster (again) on the same data dir and port; wait until it answers."""
        user = _run_as()
        log = open(os.path.join(self.base, "postgres.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [find_bin("postgres"), "-D", self.datadir], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                user=user.pw_uid if user else None, group=user.pw_gid if user else None)
        finally:
            log.close()
        st = proc_stat(self.proc.pid)
        self.starttime = st[2] if st else None
        poll(self._ready, timeout, interval=0.1, message="postgres did not start:\n" + self.log_tail())

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("postgres exited:\n" + self.log_tail())
        import psycopg
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def halt(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT) of our postmaster; SIGKILL if it does not end in time."""
        if self.proc is None:
            return
        self.resume()
        if self.proc.poll() is None and pid_alive(self.proc.pid, self.starttime):
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        try:
            self.halt()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(os.path.join(self.base, "postgres.log"), "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # --- hanging it ----------------------------------------------------------

    def backends(self) -> list[int]:
        return proc_children(self.pid) if self.proc and self.proc.poll() is None else []

    def pause(self, *, children: bool | list[int] = False) -> None:
        """SIGSTOP the postmaster; with children=True also every child, or the given pids."""
        pids = [self.pid]
        if children is True:
            pids += self.backends()
        elif children:
            pids += [p for p in children if p in self.backends()]
        for pid in pids:
            st = proc_stat(pid)
            if st is None:
                continue
            self.paused.append((pid, st[2]))
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid, start in reversed(self.paused):
            if pid_alive(pid, start):
                os.kill(pid, signal.SIGCONT)
        self.paused.clear()

    # --- connecting ----------------------------------------------------------

    def dsn(self, role: str = "postgres", dbname: str = "postgres", **extra) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname={dbname} user={role} password={PASSWORD}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def url(self, role: str = "app", dbname: str = "appdb", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{role}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def unix_dsn(self, role: str = "postgres", dbname: str = "postgres") -> str:
        return f"host={self.sockdir} port={self.port} dbname={dbname} user={role}"

    def sql(self, text: str, params=None, dbname: str = "postgres", split: bool = True):
        """Run ';'-separated statements (or one, with `params` or split=False); last rows."""
        import psycopg
        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True, connect_timeout=5) as c:
            rows = []
            single = params is not None or not split
            for stmt in [text] if single else [s for s in text.split(";") if s.strip()]:
                cur = c.execute(stmt.encode() if params is None else stmt, params)
                if cur.description is not None:
                    rows = cur.fetchall()
            return rows

    def activity(self, where: str = "true", dbname: str = "postgres"):
        """Client backends (pid, application_name, client_addr, client_port, usename, state),
        excluding the session asking."""
        return self.sql(
            "SELECT pid, application_name, host(client_addr), client_port, usename, state "
            "FROM pg_stat_activity WHERE backend_type = 'client backend' "
            f"AND pid <> pg_backend_pid() AND ({where})", split=False, dbname=dbname)


def _run_as():
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def _run(argv, user, timeout: float) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                         cwd="/")
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:2])} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
