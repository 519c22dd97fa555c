"""Near-duplicate groups of a collection's images, kept in the database.

An image item's fingerprint is written at ingest into its meta (`Item.meta["fingerprint"]`, see
mmrag.ingest.dedup), so it travels with the item and is deleted with it. The table `image_groups` holds, per
fingerprinted item, its pHash (a first filter over the whole collection without reading any JSON) and its
group id; it is derived data: `regroup` rebuilds it from the fingerprints. Rows go when their item goes
(ON DELETE CASCADE); a group whose first member is deleted keeps its id, which is only a label.

Groups grow one image at a time (a `DuplicateGrouper` per ingest run, called after each document is
committed): a new image joins the existing group whose members it all matches (the closest such group), else
it starts a group of its own. Two existing groups are never merged by a newcomer: like complete linkage, no
chain of look-alikes. `regroup` recomputes them all at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mmrag.ingest.dedup import (
    FINGERPRINT_KEY,
    DuplicateRule,
    Fingerprint,
    compare,
    fingerprint,
    group_duplicates,
)
from mmrag.store.db import Database
from mmrag.store.models import Document, ImageGroup, Item

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

_IMAGE = "image"
_SIGN = 1 << 63
_BITS = 1 << 64


@dataclass(frozen=True)
class ImageLocation:
    """Where one copy of a picture is: its item, file, page (in a PDF) and size."""

    item_id: int
    path: str
    page: int | None
    width: int
    height: int

    def label(self) -> str:
        """ "report.pdf p.3" or "copy.jpg": how a result names the other copies."""
        name = Path(self.path).name
        return f"{name} p.{self.page}" if self.page is not None else name


def _signed(phash: int) -> int:
    return phash - _BITS if phash >= _SIGN else phash


def fingerprint_of(item: Item) -> Fingerprint | None:
    """The fingerprint in an item's meta, or None (none written, or unreadable: logged, never raised)."""
    text = (item.meta or {}).get(FINGERPRINT_KEY)
    if not text:
        return None
    try:
        return Fingerprint.from_text(str(text))
    except ValueError as exc:
        log.warning("item %s: ignoring its fingerprint: %s", item.id, exc)
        return None


class _Known:
    """The collection's grouped images: pHashes in a growing array for the first filter, groups, and the
    fingerprints of the candidates read so far."""

    def __init__(self, rows: Sequence[tuple[int, int, int]]) -> None:
        import numpy as np

        self._ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._hashes = np.array([r[1] % _BITS for r in rows], dtype=np.uint64)
        self._count = len(rows)
        self.group_of = {r[0]: r[2] for r in rows}
        self.members: dict[int, list[int]] = defaultdict(list)
        for item_id, _, group_id in rows:
            self.members[group_id].append(item_id)
        self.prints: dict[int, Fingerprint] = {}

    def near(self, phash: int, max_hamming: int) -> list[int]:
        import numpy as np

        distances = np.bitwise_count(self._hashes[: self._count] ^ np.uint64(phash))
        return [int(i) for i in self._ids[: self._count][distances <= max_hamming] if int(i) in self.group_of]

    def add(self, item_id: int, fp: Fingerprint, group_id: int) -> None:
        import numpy as np

        if self._count == len(self._ids):  # grow by doubling: adding n images costs O(n) copies in all
            size = max(16, 2 * self._count)
            self._ids = np.resize(self._ids, size)
            self._hashes = np.resize(self._hashes, size)
        self._ids[self._count], self._hashes[self._count] = item_id, fp.phash
        self._count += 1
        self.group_of[item_id] = group_id
        self.members[group_id].append(item_id)
        self.prints[item_id] = fp

    def forget(self, item_id: int) -> None:
        """An item deleted since the rows were read (a re-indexed file's old items): out of its group."""
        group_id = self.group_of.pop(item_id, None)
        if group_id is not None:
            self.members[group_id].remove(item_id)


class DuplicateGrouper:
    """Puts newly stored images into groups, one document at a time, for one ingest run.

    The collection's rows are read once, on first use; items deleted during the run (a changed file's old
    items) drop out of their groups when next met. Use it under the collection's writer lock, as ingest does.
    """

    def __init__(self, db: Database, collection: str, rule: DuplicateRule | None = None) -> None:
        self.db = db
        self.collection = collection
        self.rule = rule or DuplicateRule()
        self._known: _Known | None = None

    def assign_document(self, document_id: int) -> dict[int, int]:
        """assign() for the items of one document (Collection.replace_document returns its id)."""
        with self.db.session() as session:
            ids = session.scalars(select(Item.id).where(Item.document_id == document_id)).all()
        return self.assign(ids)

    def assign(self, item_ids: Iterable[int]) -> dict[int, int]:
        """item id -> group id for the given image items that have a fingerprint and no group yet: each joins
        the existing group all of whose members it matches (the closest), else starts its own."""
        wanted = sorted({int(i) for i in item_ids})
        if not wanted:
            return {}
        assigned: dict[int, int] = {}
        with self.db.session() as session:
            if self._known is None:
                rows = session.execute(
                    select(ImageGroup.item_id, ImageGroup.phash, ImageGroup.group_id).where(
                        ImageGroup.collection == self.collection
                    )
                ).all()
                self._known = _Known([tuple(row) for row in rows])
            known = self._known
            # by primary key; collection and modality are checked here (see Collection.items_by_id)
            for item in session.scalars(select(Item).where(Item.id.in_(wanted)).order_by(Item.id)).all():
                if item.collection != self.collection or item.modality != _IMAGE or item.id in known.group_of:
                    continue
                fp = fingerprint_of(item)
                if fp is None:
                    continue
                group_id = self._choose_group(session, known, item.id, fp)
                known.add(item.id, fp, group_id)
                session.add(
                    ImageGroup(
                        item_id=item.id,
                        collection=self.collection,
                        phash=_signed(fp.phash),
                        group_id=group_id,
                    )
                )
                assigned[item.id] = group_id
        return assigned

    def _choose_group(self, session: Session, known: _Known, item_id: int, fp: Fingerprint) -> int:
        import numpy as np

        best: tuple[float, int] | None = None
        for group_id in sorted({known.group_of[i] for i in known.near(fp.phash, self.rule.max_hamming)}):
            self._refresh(session, known, list(known.members[group_id]))
            members = known.members[group_id]  # without the members deleted since the rows were read
            if not members:
                continue
            distances = [compare(fp, known.prints[m]) for m in members]
            if not all(d.within(self.rule) for d in distances):
                continue
            closeness = float(np.mean([d.luma_rms for d in distances]))
            if best is None or (closeness, group_id) < best:
                best = (closeness, group_id)
        return best[1] if best is not None else item_id

    @staticmethod
    def _refresh(session: Session, known: _Known, ids: list[int]) -> None:
        """Forget the items among `ids` that are gone; read the fingerprints not read yet."""
        existing = set(session.scalars(select(Item.id).where(Item.id.in_(ids))))
        for item_id in set(ids) - existing:
            known.forget(item_id)
        unread = [i for i in existing if i not in known.prints]
        if unread:
            for item in session.scalars(select(Item).where(Item.id.in_(unread))):
                fp = fingerprint_of(item)
                if fp is None:
                    known.forget(item.id)
                else:
                    known.prints[item.id] = fp


def assign_groups(
    db: Database, collection: str, item_ids: Iterable[int], rule: DuplicateRule | None = None
) -> dict[int, int]:
    """DuplicateGrouper(...).assign(item_ids), once: for a single call outside an ingest run."""
    return DuplicateGrouper(db, collection, rule).assign(item_ids)


def assign_document_groups(
    db: Database, collection: str, document_id: int, rule: DuplicateRule | None = None
) -> dict[int, int]:
    """DuplicateGrouper(...).assign_document(document_id), once."""
    return DuplicateGrouper(db, collection, rule).assign_document(document_id)


def regroup(db: Database, collection: str, rule: DuplicateRule | None = None) -> list[list[int]]:
    """Rebuild the collection's groups from the fingerprints in item meta, all at once (complete linkage):
    after a rule change, or for a collection indexed before fingerprints (see backfill_fingerprints).
    Returns the groups of two or more item ids."""
    with db.session() as session:
        items = session.scalars(
            select(Item).where(Item.collection == collection, Item.modality == _IMAGE).order_by(Item.id)
        ).all()
        prints = [(item.id, fp) for item in items if (fp := fingerprint_of(item)) is not None]
        groups = group_duplicates(prints, rule)
        group_of = {item_id: group[0] for group in groups for item_id in group}
        session.execute(delete(ImageGroup).where(ImageGroup.collection == collection))
        session.add_all(
            ImageGroup(
                item_id=item_id,
                collection=collection,
                phash=_signed(fp.phash),
                group_id=group_of.get(item_id, item_id),
            )
            for item_id, fp in prints
        )
    return groups


def backfill_fingerprints(db: Database, collection: str, data_dir: Path) -> int:
    """Fingerprint the image items that have none, from their stored thumbnails (256 px: the bench shows such
    copies group with their originals); returns how many were written. Unreadable thumbnails are logged."""
    written = 0
    with db.session() as session:
        items = session.scalars(
            select(Item).where(Item.collection == collection, Item.modality == _IMAGE)
        ).all()
        for item in items:
            if (item.meta or {}).get(FINGERPRINT_KEY) or not item.thumbnail:
                continue
            try:
                with Image.open(Path(data_dir) / item.thumbnail) as thumbnail:
                    fp = fingerprint(thumbnail.convert("RGB"))
            except (OSError, ValueError) as exc:
                log.warning("item %s: cannot fingerprint its thumbnail %s: %s", item.id, item.thumbnail, exc)
                continue
            if fp is not None:
                item.meta = {**(item.meta or {}), FINGERPRINT_KEY: fp.to_text()}  # a new dict: JSON is saved
                written += 1
    return written


def _locations(session: Session, item_ids: Sequence[int]) -> dict[int, ImageLocation]:
    if not item_ids:
        return {}
    rows = session.execute(
        select(Item, Document).join(Document, Document.id == Item.document_id).where(Item.id.in_(item_ids))
    ).all()
    located = {}
    for item, document in rows:
        fp = fingerprint_of(item)
        width, height = (fp.width, fp.height) if fp is not None else (0, 0)
        located[item.id] = ImageLocation(item.id, document.path, item.page, width, height)
    return located


def duplicate_groups(db: Database, collection: str) -> list[list[ImageLocation]]:
    """Every group of two or more images, largest first, each member once, in item id order: `mmrag
    duplicates` prints these."""
    with db.session() as session:
        rows = session.execute(
            select(ImageGroup.item_id, ImageGroup.group_id).where(ImageGroup.collection == collection)
        ).all()
        members: dict[int, list[int]] = defaultdict(list)
        for item_id, group_id in rows:
            members[group_id].append(item_id)
        shared = [sorted(ids) for ids in members.values() if len(ids) > 1]
        located = _locations(session, [i for ids in shared for i in ids])
    groups = [[located[i] for i in ids if i in located] for ids in shared]
    return sorted((g for g in groups if len(g) > 1), key=lambda g: (-len(g), g[0].path, g[0].item_id))


def other_copies(db: Database, collection: str, item_ids: Iterable[int]) -> dict[int, list[ImageLocation]]:
    """For each given item in a group of two or more: the group's other members ("also in"). Items in no
    group, or alone in theirs, are left out."""
    wanted = sorted({int(i) for i in item_ids})
    if not wanted:
        return {}
    with db.session() as session:
        group_of = dict(
            session.execute(
                select(ImageGroup.item_id, ImageGroup.group_id).where(ImageGroup.item_id.in_(wanted))
            ).all()
        )
        rows = session.execute(
            select(ImageGroup.item_id, ImageGroup.group_id).where(
                ImageGroup.collection == collection, ImageGroup.group_id.in_(set(group_of.values()))
            )
        ).all()
        members: dict[int, list[int]] = defaultdict(list)
        for item_id, group_id in rows:
            members[group_id].append(item_id)
        located = _locations(session, [i for ids in members.values() if len(ids) > 1 for i in ids])
    copies = {}
    for item_id in wanted:
        others = [
            located[m]
            for m in sorted(members.get(group_of.get(item_id, -1), []))
            if m != item_id and m in located
        ]
        if others:
            copies[item_id] = others
    return copies
