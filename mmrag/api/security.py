"""API keys and what each may reach; the service keeps only the keys' sha256 digests.

Keys come from the config (`api.api_key_hashes`: full access; `api.keys`: scoped to collections) and from
the database (made at run time by an admin key, POST /v1/keys). A key reaches the service as
`X-API-Key: <key>` or `Authorization: Bearer <key>`. Keys are random (32 bytes, urlsafe base64), so a plain
sha256 is enough: there is no password to guess offline, and looking a digest up in the database says
nothing useful about any key.

    mmrag key --collection photos       # a new key and its digest (python -m mmrag.api.security: the same)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmrag.settings import ApiSettings

API_KEY_HEADER = "X-API-Key"
EVERY_COLLECTION = "*"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh key and its sha256 hex digest."""
    key = secrets.token_urlsafe(32)
    return key, hash_api_key(key)


@dataclass(frozen=True)
class KeyScope:
    """What one key may reach: its collections (read, write, create) and, for an admin, everything."""

    collections: frozenset[str]
    admin: bool = False
    key_id: str | None = None  # a run-time key's id; None for keys from the config

    @property
    def every_collection(self) -> bool:
        return self.admin or EVERY_COLLECTION in self.collections

    def allows(self, collection: str) -> bool:
        return self.every_collection or collection in self.collections

    def visible(self, collections: Iterable[str]) -> list[str]:
        return [name for name in collections if self.allows(name)]

    def describe(self) -> str:
        return "every collection" if self.every_collection else ", ".join(sorted(self.collections))


FULL_ACCESS = KeyScope(frozenset({EVERY_COLLECTION}), admin=True)


class ApiKeyVerifier:
    """The keys of the config: `api_key_hashes` (full access, admin) and `api.keys` (scoped)."""

    def __init__(self, api: ApiSettings) -> None:
        self._keys: list[tuple[bytes, KeyScope]] = [
            (bytes.fromhex(digest), FULL_ACCESS) for digest in api.api_key_hashes
        ]
        self._keys += [
            (bytes.fromhex(key.sha256), KeyScope(frozenset(key.collections), admin=key.admin))
            for key in api.keys
        ]

    @property
    def enabled(self) -> bool:
        """Authentication is on when the config names at least one key."""
        return bool(self._keys)

    def verify(self, presented: str | None) -> KeyScope | None:
        """The scope of `presented` when it is one of the config's keys. Every stored digest is compared,
        matched or not, with hmac.compare_digest, so the time taken says nothing about which key (or how
        much of one) matched."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found: KeyScope | None = None
        for stored, scope in self._keys:
            if hmac.compare_digest(digest, stored) and found is None:
                found = scope
        return found


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key from `X-API-Key`, else from `Authorization: Bearer <key>`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def key_instructions(key: str, digest: str, collections: list[str] | None = None, admin: bool = False) -> str:
    """How to configure a new key: full access without collections, else scoped to them."""
    lines = [f"key:    {key}", f"sha256: {digest}", ""]
    if not collections:
        lines += [
            "Full access (every collection, admin): add the digest to api.api_key_hashes, e.g.",
            f"  MMRAG_API__API_KEY_HASHES='[\"{digest}\"]'",
        ]
    else:
        names = ", ".join(f'"{name}"' for name in collections)
        entry = f'{{"sha256": "{digest}", "collections": [{names}], "admin": {str(admin).lower()}}}'
        lines += ["Scoped: add an entry to api.keys, e.g.", f"  MMRAG_API__KEYS='[{entry}]'"]
    lines += [
        "",
        "Clients send the key as X-API-Key or Authorization: Bearer; the server keeps only the digest.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - `mmrag key` does the same, with scopes
    print(key_instructions(*new_api_key()))
