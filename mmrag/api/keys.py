"""API keys made at run time by an admin (table `api_keys`, migration 0005): made, listed, revoked, and
looked up by digest on every request that presents a key the config does not know. Revoking is deleting the
row, so it holds at once for every process on the database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select

from mmrag.api.security import KeyScope, hash_api_key, new_api_key
from mmrag.store.db import Database
from mmrag.store.models import ApiKey, utcnow


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, collections: Sequence[str], admin: bool) -> tuple[str, ApiKey]:
        """A new key (shown to its maker once, never stored) and its row."""
        key, digest = new_api_key()
        row = ApiKey(
            id=uuid.uuid4().hex,
            sha256=digest,
            name=name,
            collections=sorted(set(collections)),
            admin=admin,
            created_at=utcnow(),
        )
        with self.db.session() as session:
            session.add(row)
        return key, row

    def all(self) -> list[ApiKey]:
        with self.db.session() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))

    def revoke(self, key_id: str) -> bool:
        with self.db.session() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                return False
            session.delete(row)
        return True

    def scope_of(self, presented: str) -> KeyScope | None:
        with self.db.session() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.sha256 == hash_api_key(presented)))
        if row is None:
            return None
        return KeyScope(frozenset(row.collections), admin=row.admin, key_id=row.id)
