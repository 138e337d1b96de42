"""The identity provider's signing keys (its JWKS), fetched over HTTP and cached.

Fetched on the event loop with a deadline (`DEALFLOW_JWKS_TIMEOUT_SECONDS`),
so a provider that hangs neither holds a worker thread nor stalls a request
for long. One fetch at a time: requests that need the keys while a fetch is
under way wait for it instead of starting their own.

The set is fetched again when it is older than `KEYS_TTL_SECONDS`, or when a
token names a key (`kid`) the set lacks — a key rotation — but then at most
once per `DEALFLOW_JWKS_REFETCH_SECONDS`, so tokens with made-up key ids
cannot make the API hammer the provider. A set that can no longer be fetched
keeps serving until a fetch succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

log = logging.getLogger("dealflow.api.jwks")

# The provider rotates keys rarely; this bounds how long a withdrawn key stays trusted.
KEYS_TTL_SECONDS = 300.0
# After a failed fetch, requests answer "unavailable" at once for this long
# instead of each waiting out its own fetch deadline.
FAILED_FETCH_PAUSE_SECONDS = 2.0
# A key set is a few kilobytes; anything far larger is not one.
MAX_JWKS_BYTES = 1 << 20


class JwksUnavailable(Exception):
    """The key set cannot be fetched (and none is cached): HTTP 503."""


class UnknownSigningKey(Exception):
    """The token names no key of the provider's set: HTTP 401."""


class JwksCache:
    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 5.0,
        refetch_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.refetch_seconds = refetch_seconds
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._failed_at = float("-inf")
        self._lock = asyncio.Lock()

    async def signing_key(self, kid: str | None) -> jwt.PyJWK:
        """The key `kid` names (no `kid`: the set's only key), fetching the set as needed."""
        key = self._cached(kid)
        if key is not None and not self._stale():
            return key
        async with self._lock:
            # Another request may have fetched while this one waited.
            key = self._cached(kid)
            if key is not None and not self._stale():
                return key
            if self._may_fetch(known=key is not None):
                await self._refresh()
            key = self._cached(kid)
        if key is not None:
            return key
        if self._keys is None:
            raise JwksUnavailable("the identity provider's signing keys cannot be fetched")
        raise UnknownSigningKey(
            "the token's key id (kid) is not among the identity provider's signing keys"
            if kid is not None
            else "the token names no key id (kid) and the identity provider has several keys"
        )

    def _cached(self, kid: str | None) -> jwt.PyJWK | None:
        if self._keys is None:
            return None
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _stale(self) -> bool:
        return self.clock() - self._fetched_at >= KEYS_TTL_SECONDS

    def _may_fetch(self, *, known: bool) -> bool:
        now = self.clock()
        if now - self._failed_at < FAILED_FETCH_PAUSE_SECONDS:
            return False
        if self._keys is None or self._stale():
            return True
        # The set is fresh and lacks the key: a rotation, or a made-up kid.
        return not known and now - self._attempted_at >= self.refetch_seconds

    async def _refresh(self) -> None:
        self._attempted_at = self.clock()
        self.fetches += 1
        try:
            async with asyncio.timeout(self.timeout_seconds):
                document = await self._fetch()
            keys = _signing_keys(document)
        except (TimeoutError, httpx.HTTPError, ValueError, jwt.PyJWKError) as e:
            self._failed_at = self.clock()
            # The URL goes to the log for the operator, never into an answer.
            log.warning(
                "the identity provider's keys could not be fetched: %s",
                _describe(e),
                extra={"jwks_url": self.url},
            )
            return
        self._keys = keys
        self._fetched_at = self.clock()

    async def _fetch(self) -> Any:
        timeout = httpx.Timeout(self.timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            response = await http.get(self.url, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
        return response.json()


def _signing_keys(document: Any) -> dict[str | None, jwt.PyJWK]:
    """The set's signature keys by key id (keys for encryption are left out)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the answer is not a JWK set")
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWKError:
            continue  # a key type or algorithm this API does not use
        keys[key.key_id] = key
    if not keys:
        raise ValueError("the key set has no usable signing key")
    return keys


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
