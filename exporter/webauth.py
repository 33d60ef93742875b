"""Basic auth and the rate limit of `--web.config.file` (exporter/webconfig.py).

Passwords are checked with bcrypt, which is slow on purpose (~65 ms at cost 10), so:

* checks run in one thread of their own, never on the event loop (bcrypt releases the
  GIL): a flood of guesses costs that thread, not the scrapes;
* at most `MAX_WAITING` checks wait for it; a request beyond that is answered 429
  without a check (its password was not looked at, so nothing is learned from it), and
  its connection is free again at once;
* a credential bcrypt accepted is remembered, as a SHA-256 of user, hash and password
  (as exporter-toolkit caches), so Prometheus pays bcrypt once, not every scrape;
  failures are not remembered, so guesses cannot push a real scraper's entry out;
* an unknown user is checked against a configured user's hash, the same work as a
  wrong password for that user, so the time to answer does not tell which users exist.

The rate limit is exporter-toolkit's: a token bucket of `burst` requests refilled one
per `interval`, for every request, answered 429 when empty.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

MAX_WAITING = 16        # password checks queued for the bcrypt thread
MAX_VERIFIED = 64       # credentials remembered (per user, hash and password)


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header, or None."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(token) > 4096:
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True) \
            .decode("utf-8").partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class BasicAuth:
    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._waiting = 0
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self.checks = 0          # bcrypt comparisons made (for tests and curiosity)

    async def check(self, users: dict[str, bytes], header: str) -> bool | None:
        """True: let in; False: wrong or missing credentials; None: too many checks
        waiting, not checked."""
        if not users:
            return True
        creds = parse_basic(header)
        if creds is None:
            return False
        user, password = creds
        hashed = users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed or b"", password.encode())))\
            .digest()
        if hashed is not None and key in self._verified:
            self._verified.move_to_end(key)
            return True
        if self._waiting >= MAX_WAITING:
            return None
        import bcrypt
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
        # an unknown user costs what a wrong password of a known one costs
        against = hashed if hashed is not None else next(iter(users.values()))
        self._waiting += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._pool, bcrypt.checkpw, password.encode(), against)
        except ValueError:
            ok = False
        finally:
            self._waiting -= 1
            self.checks += 1
        if not (ok and hashed is not None):
            return False
        self._verified[key] = None
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)
        return True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class RateLimit:
    """Go's rate.Limiter(Every(interval), burst).Allow(): starts full."""

    def __init__(self, interval: float, burst: float, now: float | None = None):
        self.interval, self.burst = interval, burst
        self._tokens = float(burst)
        self._at = time.monotonic() if now is None else now

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
