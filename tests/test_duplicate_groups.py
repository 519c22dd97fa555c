"""Near-duplicate groups kept in the database: real photos as files and inside a PDF (read by extract_pdf),
stored through Collection.replace_document, grouped one document at a time as ingest will, then folded in
results."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from mmrag.collection import Collection, NewItem
from mmrag.ingest.dedup import FINGERPRINT_KEY, Fingerprint, fingerprint, fingerprint_meta
from mmrag.ingest.images import extract_image_file, make_thumbnail
from mmrag.ingest.items import ExtractedItem
from mmrag.ingest.pdf import extract_pdf
from mmrag.retrieve.duplicates import fold_duplicates, format_groups
from mmrag.retrieve.search import Hit
from mmrag.settings import IngestSettings, load_settings
from mmrag.store.db import Database
from mmrag.store.duplicates import (
    DuplicateGrouper,
    ImageGroup,
    assign_document_groups,
    backfill_fingerprints,
    duplicate_groups,
    other_copies,
    regroup,
)
from mmrag.store.models import Item
from tests.realdata import photo_image, write_pdf_with_photos, write_photos

NAME = "dups"


def _new_item(extracted: ExtractedItem, thumbnail: str | None = None) -> NewItem:
    assert extracted.image is not None
    return NewItem(
        modality=extracted.modality.value,
        content_hash=extracted.content_hash,
        page=extracted.page,
        meta={**extracted.meta, **fingerprint_meta(extracted.image)},  # what ingest adds per image item
        thumbnail=thumbnail,
    )


def _store(collection: Collection, path: Path, items: list[NewItem], grouper: DuplicateGrouper) -> int:
    """What ingest does per file: store the document, then group its images."""
    doc_id = collection.replace_document(
        path=str(path), kind=path.suffix[1:], content_hash=path.name, size=1, mtime=1.0, items=items
    )
    grouper.assign_document(doc_id)
    return doc_id


Library = tuple[Collection, dict[str, int], "DuplicateGrouper"]


@pytest.fixture
def library(tmp_path: Path) -> tuple[Collection, dict[str, int]]:
    """astronaut.jpg, chelsea.jpg, report.pdf (coffee on p.1, astronaut on p.2), small/astronaut.png (a
    half-size copy) and 12 handwritten digits as files (look-alikes that must stay apart)."""
    settings = load_settings(None, data_dir=tmp_path / "data")
    collection = Collection(settings, Database(settings.db_url), [], name=NAME)
    grouper = DuplicateGrouper(collection.db, NAME)  # one per ingest run
    ingest = IngestSettings()
    files = write_photos(tmp_path / "photos", ["astronaut", "chelsea"])
    pdf = tmp_path / "docs" / "report.pdf"
    write_pdf_with_photos(pdf, [["coffee"], ["astronaut"]])
    small = tmp_path / "small" / "astronaut.png"
    small.parent.mkdir()
    photo_image("astronaut").resize((256, 256), Image.Resampling.LANCZOS).save(small)
    docs = {}
    for path in (files["astronaut"], files["chelsea"], pdf, small):
        extracted = extract_pdf(path, ingest) if path.suffix == ".pdf" else extract_image_file(path, ingest)
        docs[path.name] = _store(
            collection, path, [_new_item(e) for e in extracted if e.image is not None], grouper
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in np.flatnonzero(digits.target == 3)[:12].tolist():
        path = tmp_path / "digits" / f"three-{index}.png"
        path.parent.mkdir(exist_ok=True)
        grey = np.rint(digits.images[index] * 255 / 16).astype(np.uint8)
        Image.fromarray(grey).resize((64, 64), Image.Resampling.NEAREST).save(path)
        _store(collection, path, [_new_item(e) for e in extract_image_file(path, ingest)], grouper)
    return collection, docs, grouper


def _item_ids(collection: Collection, doc_id: int) -> list[int]:
    with collection.db.session() as session:
        return list(session.scalars(select(Item.id).where(Item.document_id == doc_id).order_by(Item.id)))


def _hit(item_id: int, path: str) -> Hit:
    return Hit(item_id, 1.0, "image", path, None, None, None, None)


def test_copies_group_at_ingest_and_look_alikes_do_not(library: Library) -> None:
    collection, _, _ = library
    groups = duplicate_groups(collection.db, NAME)
    assert [[location.label() for location in group] for group in groups] == [
        ["astronaut.jpg", "report.pdf p.2", "astronaut.png"]
    ]
    text = format_groups(groups)
    assert "1 groups of near-duplicate images, 3 images" in text
    assert "= " in text and "report.pdf p.2  [512x512]" in text and "astronaut.png  [256x256]" in text
    assert format_groups([]) == "no near-duplicate images"


def test_results_show_each_picture_once_with_its_other_copies(
    library: Library,
) -> None:
    collection, docs, _ = library
    [small_id] = _item_ids(collection, docs["astronaut.png"])
    [photo_id] = _item_ids(collection, docs["astronaut.jpg"])
    [cat_id] = _item_ids(collection, docs["chelsea.jpg"])
    hits = [_hit(small_id, "astronaut.png"), _hit(cat_id, "chelsea.jpg"), _hit(photo_id, "astronaut.jpg")]
    copies = other_copies(collection.db, NAME, [h.item_id for h in hits])
    assert cat_id not in copies  # alone in its group
    folded = fold_duplicates(hits, copies)
    assert [f.hit.item_id for f in folded] == [small_id, cat_id]
    assert folded[0].also_in_text() == "also in: astronaut.jpg, report.pdf p.2"
    assert folded[1].also_in_text() == ""


def test_deleting_and_replacing_documents_keeps_groups_consistent(library: Library, tmp_path: Path) -> None:
    collection, docs, grouper = library
    collection.delete_documents([docs["report.pdf"]])
    assert [len(g) for g in duplicate_groups(collection.db, NAME)] == [2]  # its rows went with its items
    # the small copy re-indexed in the same run (a changed file): its old item is deleted, the new one has a
    # new id, and it finds its group again although the run's grouper still remembers the old item
    small = tmp_path / "small" / "astronaut.png"
    photo_image("astronaut").resize((200, 200), Image.Resampling.LANCZOS).save(small)
    extracted = extract_image_file(small, IngestSettings())
    new_id = _store(collection, small, [_new_item(e) for e in extracted], grouper)
    assert new_id == docs["astronaut.png"]
    [group] = duplicate_groups(collection.db, NAME)
    assert [loc.label() for loc in group] == ["astronaut.jpg", "astronaut.png"] and group[1].width == 200
    # the next run's grouper agrees: a third copy joins the same group
    copy = tmp_path / "copy.jpg"
    photo_image("astronaut").save(copy, quality=50)
    next_run = DuplicateGrouper(collection.db, NAME)
    _store(collection, copy, [_new_item(e) for e in extract_image_file(copy, IngestSettings())], next_run)
    assert [len(g) for g in duplicate_groups(collection.db, NAME)] == [3]


def test_regroup_and_backfill_from_thumbnails(library: Library, tmp_path: Path) -> None:
    collection, _, _ = library
    # an item indexed before fingerprints existed: only its thumbnail, as ingest writes it
    data_dir = tmp_path / "data"
    relative = "thumbnails/old-chelsea.webp"
    (data_dir / "thumbnails").mkdir(parents=True, exist_ok=True)
    (data_dir / relative).write_bytes(make_thumbnail(photo_image("chelsea"), 256))
    old = tmp_path / "old" / "cat.jpg"
    item = NewItem(modality="image", content_hash="old", thumbnail=relative)
    collection.replace_document(
        path=str(old), kind="image", content_hash="o", size=1, mtime=1.0, items=[item]
    )
    assert backfill_fingerprints(collection.db, NAME, data_dir) == 1
    assert backfill_fingerprints(collection.db, NAME, data_dir) == 0  # written once
    groups = regroup(collection.db, NAME)
    assert sorted(len(g) for g in groups) == [2, 3]  # the chelsea pair joins the astronaut trio
    labels = sorted(sorted(loc.label() for loc in g) for g in duplicate_groups(collection.db, NAME))
    assert labels == [["astronaut.jpg", "astronaut.png", "report.pdf p.2"], ["cat.jpg", "chelsea.jpg"]]
    with collection.db.session() as session:
        rows = session.scalars(select(ImageGroup).where(ImageGroup.collection == NAME)).all()
        assert len(rows) == 18  # every fingerprinted image has a row, grouped or not (12 of them digits)
        stored = {r.item_id: r.phash % 2**64 for r in rows}  # 64-bit hashes, kept as signed integers
        items = session.scalars(select(Item).where(Item.id.in_(stored))).all()
        assert stored == {i.id: Fingerprint.from_text(i.meta[FINGERPRINT_KEY]).phash for i in items}
        assert min(r.phash for r in rows) < 0  # the top bit (pHash's DC term) is set: beyond int64's range


def test_an_unreadable_fingerprint_is_skipped(library: Library, tmp_path: Path) -> None:
    collection, _, _ = library
    bad = NewItem(modality="image", content_hash="bad", meta={FINGERPRINT_KEY: "v1:not-a-fingerprint"})
    path = tmp_path / "bad.png"
    doc_id = collection.replace_document(
        path=str(path), kind="image", content_hash="b", size=1, mtime=1.0, items=[bad]
    )
    assert assign_document_groups(collection.db, NAME, doc_id) == {}
    assert len(duplicate_groups(collection.db, NAME)) == 1


def _shifted(base: Fingerprint, grey_levels: np.ndarray) -> Fingerprint:
    luma = np.frombuffer(base.luma, dtype=np.uint8).astype(np.int16) + grey_levels.astype(np.int16)
    return replace(base, luma=np.clip(luma, 0, 255).astype(np.uint8).tobytes())


def test_a_member_deleted_during_the_run_no_longer_holds_its_group_back(library: Library) -> None:
    """A, B and C are copies; C matches A but not B. Once B is deleted, C joins A's group, even in the run
    that still remembered B."""
    collection, _, grouper = library
    a = fingerprint(photo_image("camera"))
    assert a is not None
    step = np.where(np.arange(256) % 2 == 0, 2, -2)
    b, c = _shifted(a, step), _shifted(a, -step)  # A-B and A-C 2 grey levels RMS, B-C 4: over the rule's 3
    docs = {}
    for name, fp in (("a.png", a), ("b.png", b), ("c.png", c)):
        item = NewItem(modality="image", content_hash=name, meta={FINGERPRINT_KEY: fp.to_text()})
        docs[name] = collection.replace_document(
            path=f"/x/{name}", kind="image", content_hash=name, size=1, mtime=1.0, items=[item]
        )
        if name == "b.png":
            grouper.assign_document(docs["a.png"])
            grouper.assign_document(docs["b.png"])
            labels = [[loc.label() for loc in g] for g in duplicate_groups(collection.db, NAME)]
            assert ["a.png", "b.png"] in labels
            collection.delete_documents([docs["b.png"]])
    grouper.assign_document(docs["c.png"])
    labels = [[loc.label() for loc in g] for g in duplicate_groups(collection.db, NAME)]
    assert ["a.png", "c.png"] in labels
