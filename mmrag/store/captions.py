"""The caption cache: (image hash, captioner id) -> text. Re-indexing never recaptions an unchanged image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select

from mmrag.store.db import Database
from mmrag.store.models import Caption


def cached_captions(db: Database, image_hashes: Iterable[str], captioner_id: str) -> dict[str, str]:
    """Successful captions only: a recorded failure is tried again."""
    wanted = sorted(set(image_hashes))
    found: dict[str, str] = {}
    with db.session() as session:
        for start in range(0, len(wanted), 500):
            rows = session.execute(
                select(Caption.image_hash, Caption.text).where(
                    Caption.captioner_id == captioner_id,
                    Caption.image_hash.in_(wanted[start : start + 500]),
                    Caption.error.is_(None),
                )
            )
            found.update({h: t or "" for h, t in rows})
    return found


def store_captions(
    db: Database, captioner_id: str, results: Sequence[tuple[str, str | None, str | None]]
) -> None:
    """results: (image hash, text or None, error or None)."""
    with db.session() as session:
        for image_hash, text, error in results:
            row = session.get(Caption, (image_hash, captioner_id))
            if row is None:
                session.add(Caption(image_hash=image_hash, captioner_id=captioner_id, text=text, error=error))
            else:
                row.text, row.error = text, error


def all_captions(db: Database, captioner_id: str) -> dict[str, str]:
    """Every successful caption of one captioner or OCR engine (hash -> text): the snapshot a Ray run hands
    its model workers, which never open the database."""
    with db.session() as session:
        rows = session.execute(
            select(Caption.image_hash, Caption.text).where(
                Caption.captioner_id == captioner_id, Caption.error.is_(None)
            )
        )
        return {h: t or "" for h, t in rows}
