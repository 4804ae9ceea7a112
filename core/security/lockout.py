"""Sign-in throttling: a rate per network address and a temporary lockout per user name.

Counted with the ``limits`` library in this process's memory (one API process has one guard;
with several API replicas each counts on its own). Two rules, each answered with
:class:`~core.exceptions.TooManyAttemptsError` before the password is looked at:

- one address may try ``signin_attempts_per_minute`` times in any minute (moving window), so a
  password spray over many names from one place is slowed;
- ``signin_max_failures`` failed sign-ins of one user name within ``signin_failure_window_s``
  lock that name for ``signin_lockout_s``, from every address. The failures stay counted until
  they leave their window or the right password is given, so one more failure after a lockout
  locks the name again.

Names are counted whether or not such a user exists, so a lockout does not reveal which names
exist. User names are counted by their SHA-256, so a huge name costs no more memory than a short
one.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from core.config import Settings
from core.exceptions import TooManyAttemptsError

__all__ = ["SignInGuard"]


def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


class SignInGuard:
    """Decides whether a sign-in may be tried, and counts how it went.

    Parameters
    ----------
    max_failures, failure_window_s
        Failed sign-ins of one user name within the window that lock it.
    lockout_s
        How long a locked name is refused.
    attempts_per_minute
        Sign-in attempts one network address may make in any minute.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        failure_window_s: int = 900,
        lockout_s: int = 900,
        attempts_per_minute: int = 30,
    ) -> None:
        storage = MemoryStorage()
        self._moving = MovingWindowRateLimiter(storage)
        self._fixed = FixedWindowRateLimiter(storage)
        self._failures = RateLimitItemPerSecond(max_failures, failure_window_s, namespace="fail")
        self._lock = RateLimitItemPerSecond(1, lockout_s, namespace="lock")
        self._attempts = RateLimitItemPerMinute(attempts_per_minute, namespace="addr")

    @classmethod
    def from_settings(cls, settings: Settings) -> SignInGuard:
        """The guard with the ``signin_*`` settings."""
        return cls(
            max_failures=settings.signin_max_failures,
            failure_window_s=settings.signin_failure_window_s,
            lockout_s=settings.signin_lockout_s,
            attempts_per_minute=settings.signin_attempts_per_minute,
        )

    def admit(self, name: str, address: str | None) -> None:
        """Count an attempt from ``address`` and refuse it if it may not be tried now.

        Raises
        ------
        TooManyAttemptsError
            The address tried too often this minute, or ``name`` is locked.
        """
        origin = address or "unknown"
        if not self._moving.hit(self._attempts, origin):
            raise TooManyAttemptsError(
                f'too many sign-in attempts from "{origin}"',
                self._retry_after(self._moving, self._attempts, origin),
            )
        key = _name_key(name)
        if not self._fixed.test(self._lock, key):
            raise TooManyAttemptsError(
                "too many failed sign-ins: this user name is locked",
                self._retry_after(self._fixed, self._lock, key),
            )

    def failed(self, name: str) -> bool:
        """Count a failed sign-in of ``name``; True when it locks the name."""
        key = _name_key(name)
        self._moving.hit(self._failures, key)
        if self._moving.test(self._failures, key):
            return False
        self._fixed.hit(self._lock, key)
        return True

    def succeeded(self, name: str) -> None:
        """Forget ``name``'s failures: the right password was given while it was not locked."""
        self._moving.clear(self._failures, _name_key(name))

    @staticmethod
    def _retry_after(
        limiter: MovingWindowRateLimiter | FixedWindowRateLimiter,
        item: RateLimitItem,
        key: str,
    ) -> int:
        reset_time = limiter.get_window_stats(item, key).reset_time
        return max(1, math.ceil(reset_time - time.time()))
