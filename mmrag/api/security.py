"""API keys: the service keeps only their sha256 digests and compares digests in constant time.

    python -m mmrag.api.security        # prints a new random key and the hash to put in api.api_key_hashes

A key reaches the service as `X-API-Key: <key>` or `Authorization: Bearer <key>`. Keys are random
(32 bytes, urlsafe base64), so a plain sha256 is enough: there is no password to guess offline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

API_KEY_HEADER = "X-API-Key"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh key and its sha256 hex digest."""
    key = secrets.token_urlsafe(32)
    return key, hash_api_key(key)


class ApiKeyVerifier:
    def __init__(self, key_hashes: Sequence[str]) -> None:
        self._digests = [bytes.fromhex(h) for h in key_hashes]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def verify(self, presented: str | None) -> bool:
        """True when `presented` is one of the keys. Every stored digest is compared, matched or not, with
        hmac.compare_digest, so the time taken says nothing about which key (or how much of one) matched."""
        if not self._digests:
            return True
        if not presented:
            return False
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        matched = False
        for stored in self._digests:
            matched |= hmac.compare_digest(digest, stored)
        return matched


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key from `X-API-Key`, else from `Authorization: Bearer <key>`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


if __name__ == "__main__":  # pragma: no cover - a helper for operators
    key, digest = new_api_key()
    print(f"key:    {key}\nsha256: {digest}\n\nSet it with MMRAG_API__API_KEY_HASHES='[\"{digest}\"]'")
