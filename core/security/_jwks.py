"""The identity provider's key set fetched over HTTP(S), with fetches throttled.

PyJWT's :class:`jwt.PyJWKClient` does the fetching and parsing; this keeps the keys and decides
when to ask again. A token naming a key ID that is not in the set fetches the set again (the
provider may have rotated its keys), but at most once per ``refetch_interval_s``: otherwise
anyone could make every request cost a round trip to the provider by sending made-up key IDs. A
failed fetch counts too, so an unreachable provider is not asked on every request. The set is
fetched again anyway once it is ``max_age_s`` old, so keys the provider withdrew stop working.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import jwt

from core.exceptions import AuthenticationError

__all__ = ["RemoteKeySet"]

logger = logging.getLogger(__name__)


class RemoteKeySet:
    """The signing keys published at ``url``.

    Parameters
    ----------
    url
        The provider's JWKS URL.
    refetch_interval_s
        The least time between two fetches caused by unknown key IDs.
    max_age_s
        How long a fetched set is used before it is fetched again.
    timeout_s
        How long one fetch may take.
    clock
        Monotonic seconds (for tests).
    """

    def __init__(
        self,
        url: str,
        *,
        refetch_interval_s: float,
        max_age_s: float = 300.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        self._url = url
        self._refetch_interval_s = refetch_interval_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()  # one fetch at a time; others wait for its keys

    def signing_key(self, kid: str | None) -> jwt.PyJWK:
        """The key with ID ``kid``, fetching the set first when it is due.

        Raises
        ------
        AuthenticationError
            No key of that ID, or the set cannot be fetched and holds no such key.
        """
        name = str(kid)
        with self._lock:
            if self._due(name):
                self._fetch(name)
            key = self._keys.get(name)
        if key is None:
            raise AuthenticationError(
                f'token signing key "{kid}" is not in the identity provider\'s key set'
            )
        return key

    def _due(self, kid: str) -> bool:
        if self._fetched_at is None:
            return True
        age = self._clock() - self._fetched_at
        return age >= self._max_age_s or (kid not in self._keys and age >= self._refetch_interval_s)

    def _fetch(self, kid: str) -> None:
        self._fetched_at = self._clock()
        try:
            keys = self._client.get_signing_keys()
        except (jwt.PyJWTError, ValueError) as exc:  # unreachable, not JSON, no usable key
            logger.warning("cannot fetch the identity provider's key set %s: %s", self._url, exc)
            if kid not in self._keys:
                raise AuthenticationError(
                    "the identity provider's key set cannot be fetched"
                ) from None
            return
        self._keys = {str(key.key_id): key for key in keys}
