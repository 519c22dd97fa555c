"""Near-duplicate groups of a collection's images, kept in the database.

An image item's fingerprint is written at ingest into its meta (`Item.meta["fingerprint"]`, see
mmrag.ingest.dedup), so it travels with the item and is deleted with it. The table `image_groups` holds, per
fingerprinted item, its pHash (a first filter over the whole collection without reading any JSON) and its
group id; it is derived data: `regroup` rebuilds it from the fingerprints. Rows go when their item goes
(ON DELETE CASCADE); a group whose first member is deleted keeps its id, which is only a label.

Groups grow one image at a time (`assign_groups`, after a document is committed): a new image joins the
existing group whose members it all matches (the closest such group), else it starts a group of its own.
Two existing groups are never merged by a newcomer: like complete linkage, no chain of look-alikes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import BigInteger, ForeignKey, Index, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from mmrag.ingest.dedup import (
    FINGERPRINT_KEY,
    DuplicateRule,
    Fingerprint,
    compare,
    fingerprint,
    group_duplicates,
)
from mmrag.store.db import Database
from mmrag.store.models import Base, Document, Item

log = logging.getLogger(__name__)

_IMAGE = "image"
_SIGN = 1 << 63
_BITS = 1 << 64


class ImageGroup(Base):
    """One fingerprinted image item: its pHash and the near-duplicate group it belongs to."""

    __tablename__ = "image_groups"
    __table_args__ = (Index("ix_image_groups_collection_group", "collection", "group_id"),)

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    collection: Mapped[str] = mapped_column(String(64))
    phash: Mapped[int] = mapped_column(
        BigInteger
    )  # the 64 bits as a signed integer (databases have no uint64)
    group_id: Mapped[int] = mapped_column(BigInteger)  # the id of the group's first item


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


@dataclass
class _Known:
    """The collection's grouped images, as arrays for the pHash filter, and fingerprints read on demand."""

    ids: list[int]
    phashes: list[int]  # unsigned
    group_of: dict[int, int]
    members: dict[int, list[int]]
    prints: dict[int, Fingerprint]

    def add(self, item_id: int, fp: Fingerprint, group_id: int) -> None:
        self.ids.append(item_id)
        self.phashes.append(fp.phash)
        self.group_of[item_id] = group_id
        self.members[group_id].append(item_id)
        self.prints[item_id] = fp


def _known(session: Session, collection: str) -> _Known:
    rows = session.execute(
        select(ImageGroup.item_id, ImageGroup.phash, ImageGroup.group_id).where(
            ImageGroup.collection == collection
        )
    ).all()
    members: dict[int, list[int]] = defaultdict(list)
    for item_id, _, group_id in rows:
        members[group_id].append(item_id)
    return _Known(
        ids=[r[0] for r in rows],
        phashes=[r[1] % _BITS for r in rows],
        group_of={r[0]: r[2] for r in rows},
        members=members,
        prints={},
    )


def _load_prints(session: Session, known: _Known, ids: Iterable[int]) -> None:
    missing = [i for i in ids if i not in known.prints]
    if not missing:
        return
    for item in session.scalars(select(Item).where(Item.id.in_(missing))):
        fp = fingerprint_of(item)
        if fp is not None:
            known.prints[item.id] = fp


def _choose_group(session: Session, known: _Known, item_id: int, fp: Fingerprint, rule: DuplicateRule) -> int:
    """The group this new image joins: all of whose members it matches, the closest one; else its own."""
    if known.ids:
        hashes = np.array(known.phashes, dtype=np.uint64)
        near = np.flatnonzero(np.bitwise_count(hashes ^ np.uint64(fp.phash)) <= rule.max_hamming)
        candidates = [known.ids[i] for i in near.tolist()]
    else:
        candidates = []
    groups = {known.group_of[i] for i in candidates}
    best: tuple[float, int] | None = None
    for group_id in groups:
        members = known.members[group_id]
        _load_prints(session, known, members)
        distances = [compare(fp, known.prints[m]) for m in members if m in known.prints]
        if len(distances) != len(members) or not all(d.within(rule) for d in distances):
            continue
        closeness = float(np.mean([d.luma_rms for d in distances]))
        if best is None or (closeness, group_id) < best:
            best = (closeness, group_id)
    return best[1] if best is not None else item_id


def assign_groups(
    db: Database, collection: str, item_ids: Iterable[int], rule: DuplicateRule | None = None
) -> dict[int, int]:
    """Group these (just committed) items: item id -> group id, for the image items with a fingerprint and
    no group yet. Call it after each document is stored, under the collection's writer lock."""
    rule = rule or DuplicateRule()
    wanted = sorted({int(i) for i in item_ids})
    if not wanted:
        return {}
    assigned: dict[int, int] = {}
    with db.session() as session:
        known = _known(session, collection)
        new_items = session.scalars(
            select(Item).where(Item.id.in_(wanted)).order_by(Item.id)
        ).all()  # by primary key; the collection and modality are checked here (see Collection.items_by_id)
        for item in new_items:
            if item.collection != collection or item.modality != _IMAGE or item.id in known.group_of:
                continue
            fp = fingerprint_of(item)
            if fp is None:
                continue
            group_id = _choose_group(session, known, item.id, fp, rule)
            known.add(item.id, fp, group_id)
            session.add(
                ImageGroup(item_id=item.id, collection=collection, phash=_signed(fp.phash), group_id=group_id)
            )
            assigned[item.id] = group_id
    return assigned


def assign_document_groups(
    db: Database, collection: str, document_id: int, rule: DuplicateRule | None = None
) -> dict[int, int]:
    """assign_groups for the items of one document (Collection.replace_document returns its id)."""
    with db.session() as session:
        ids = session.scalars(select(Item.id).where(Item.document_id == document_id)).all()
    return assign_groups(db, collection, ids, rule)


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
