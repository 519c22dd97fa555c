"""The lexical (BM25) list: written with the items in one transaction, kept in step by deletes and
re-indexing, never broken by query syntax, fused with the dense lists. Runs on SQLite, and on PostgreSQL
when MMRAG_TEST_POSTGRES_URL is set (scripts/test.sh)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select, text

from mmrag.collection import Collection, NewItem
from mmrag.embed.clip import ClipEmbedder
from mmrag.filters import Filters
from mmrag.retrieve.search import Retriever
from mmrag.settings import Settings
from mmrag.store import lexical
from mmrag.store.db import Database
from mmrag.store.models import Item

# Real text: lines of the gnuplot manual's "set xrange" and "set style" sections, and two of skimage's
# sample-photo docstrings.
DOCS = {
    "/manual/xrange.txt": [
        "The set xrange command sets the horizontal range that will be displayed.",
        "Autoscaling of the x axis: set xrange [*:*] lets gnuplot choose the limits.",
    ],
    "/manual/style.txt": ["set style line 1 linecolor rgb 'red' linewidth 2 pointtype 7"],
    "/photos/chelsea.md": ["Chelsea the cat. An example with texture, prominent edges in horizontal."],
    "/photos/rocket.md": ["Launch photo of DSCOVR on Falcon 9 by SpaceX."],
}
NASTY = [
    '"',
    '""',
    "*",
    "xrange*",
    "NEAR(set xrange)",
    "set NEAR xrange",
    "-xrange",
    "NOT xrange",
    "xrange AND OR",
    "text:xrange",
    "collection:default",
    "^xrange",
    "(xrange",
    "xrange)",
    "'xrange'",
    "x\\range",
    "{xrange}",
    "[*:*]",
    "xrange\x00",
    "se t x r a n g e",
    "ünïcödé — 日本語 xrange",
    "",
    "   ",
    "; DROP TABLE items; --",
    "xrange " * 2000,
]


@pytest.fixture
def collection(tiny_settings: Settings) -> tuple[Collection, Database]:
    db = Database(tiny_settings.db_url)
    coll = Collection(tiny_settings, db, [ClipEmbedder(tiny_settings.models)])
    coll.open()
    yield coll, db
    db.close()


def _items(texts: list[str], seed: int = 0) -> list[NewItem]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(texts), 32)).astype(np.float32)
    return [
        NewItem(modality="text", content_hash=f"{seed}-{i}", text=t, vectors={"clip": v})
        for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
    ]


def _store(coll: Collection, path: str, texts: list[str], seed: int = 0) -> int:
    return coll.replace_document(
        path=path, kind="text", content_hash=path + str(seed), size=1, mtime=1.0, items=_items(texts, seed)
    )


def _lexical_rows(db: Database) -> int:
    with db.session() as session:
        return int(session.execute(text(f"SELECT count(*) FROM {lexical.TABLE}")).scalar() or 0)


def _texts_found(db: Database, coll: Collection, query: str) -> list[str]:
    with db.session() as session:
        found = lexical.search(session, coll.name, query, 10, ["text"]).get("text", [])
        rows = coll.items_by_id(i for i, _ in found)
    return [rows[i][0].text or "" for i, _ in found]


def test_query_syntax_typed_by_users_never_raises(collection: tuple[Collection, Database]) -> None:
    coll, db = collection
    for path, texts in DOCS.items():
        _store(coll, path, texts)
    for query in NASTY:
        found = _texts_found(db, coll, query)  # raises on any syntax error
        if "xrange" in query.replace(" ", "") and "x r a" not in query:
            assert found and "xrange" in found[0], (query, found)
    assert lexical.query_terms('"set" NEAR(style) -line:*') == ["set", "near", "style", "line"]
    assert lexical.query_terms("the of") == ["the", "of"]  # only stopwords: kept, rather than nothing
    assert lexical.query_terms("((*))") == []
    # stemming: "lines" finds "line", "displaying" finds "displayed"
    assert "linecolor" in _texts_found(db, coll, "lines")[0]
    assert "displayed" in _texts_found(db, coll, "displaying")[0]


def test_lexical_rows_follow_the_items(collection: tuple[Collection, Database]) -> None:
    coll, db = collection
    for path, texts in DOCS.items():
        _store(coll, path, texts)
    assert _lexical_rows(db) == 5
    # re-indexing a changed file replaces its rows
    _store(coll, "/manual/xrange.txt", ["The set yrange command sets the vertical range."], seed=1)
    assert _lexical_rows(db) == 4
    assert _texts_found(db, coll, "xrange") == []
    assert "yrange" in _texts_found(db, coll, "yrange")[0]
    # deleting a document deletes its rows (through the items' cascade)
    doc = coll.document_by_path("/photos/chelsea.md")
    assert doc is not None
    coll.delete_documents([doc.id])
    assert _lexical_rows(db) == 3 and _texts_found(db, coll, "cat") == []
    with db.session() as session:
        with_text = session.scalar(select(func.count()).select_from(Item).where(Item.text.is_not(None)))
    assert with_text == _lexical_rows(db)


def test_a_failed_commit_leaves_no_lexical_rows(collection: tuple[Collection, Database]) -> None:
    coll, db = collection
    _store(coll, "/photos/rocket.md", DOCS["/photos/rocket.md"])
    broken = _items(["gnuplot voxel grids are new in version 5.4"])
    broken[0].vectors = {"clip": "not a vector"}  # type: ignore[dict-item]  # fails after the words are in
    with pytest.raises(ValueError):
        coll.replace_document(
            path="/manual/voxel.txt", kind="text", content_hash="v", size=1, mtime=1.0, items=broken
        )
    assert _lexical_rows(db) == 1 and _texts_found(db, coll, "voxel") == []


@pytest.mark.parametrize("fusion", ["calibrated", "rrf"])
def test_the_lexical_list_is_fused_and_shown(collection: tuple[Collection, Database], fusion: str) -> None:
    """Random tiny-CLIP vectors rank text by chance; the lexical list finds the exact term, and a hit says
    so like any other list (`lexical:text>text`)."""
    coll, _ = collection
    for path, texts in DOCS.items():
        _store(coll, path, texts)
    encoders = list(coll.encoders.values())
    hits = Retriever(coll, encoders, fusion=fusion).search("linecolor", k=3)
    assert hits[0].path == "/manual/style.txt"
    assert hits[0].ranks["lexical:text>text"] == 1 and hits[0].scores["lexical:text>text"] > 0
    if fusion == "calibrated":
        assert "lexical:text>text" in hits[0].calibrated
    dense_only = Retriever(coll, encoders, fusion=fusion, lexical=False).search("linecolor", k=5)
    assert all("lexical:text>text" not in hit.ranks for hit in dense_only)
    only_lexical = Retriever(coll, encoders, fusion=fusion).search("linecolor", k=5, spaces=["lexical"])
    assert [hit.path for hit in only_lexical] == ["/manual/style.txt"]


def test_a_filter_applies_inside_the_lexical_search(collection: tuple[Collection, Database]) -> None:
    """A selective filter still gets the lexical hits it matches: 30 short "xrange" notes elsewhere outrank
    the manual's lines and fill a list of depth 5, yet a folder, document or metadata filter is applied in
    the SQL, not to that list afterwards."""
    coll, _ = collection
    for path, texts in DOCS.items():
        coll.replace_document(
            path=path,
            kind="text",
            content_hash=path,
            size=1,
            mtime=1.0,
            items=_items(texts),
            meta={"owner": "ann" if path.startswith("/manual/") else "bob"},
        )
    for n in range(30):
        _store(coll, f"/notes/{n}.txt", [f"xrange note {n}"], seed=n + 1)
    unfiltered = coll.lexical_search("xrange", 5, ["text"])["text"]
    rows = coll.items_by_id(i for i, _ in unfiltered)
    assert all(rows[i][1].path.startswith("/notes/") for i, _ in unfiltered)  # the manual is not in it
    manual = coll.document_by_path("/manual/xrange.txt")
    assert manual is not None
    for filters in (
        Filters.of(path_prefixes=["/manual"]),
        Filters.of(document_ids=[manual.id]),
        Filters.of(metadata={"owner": "ann"}),
    ):
        found = coll.lexical_search("xrange", 5, ["text", "image"], filters)
        paths = {coll.items_by_id([i])[i][1].path for i, _ in found["text"]}
        assert paths == {"/manual/xrange.txt"} and len(found["text"]) == 2, filters
        hits = Retriever(coll, list(coll.encoders.values())).search(
            "xrange", k=5, spaces=["lexical"], filters=filters
        )
        assert [hit.path for hit in hits] == ["/manual/xrange.txt"]  # a text file's chunks: one hit
    assert coll.lexical_search("xrange", 5, ["text"], Filters.of(modalities=["image"])) == {}
    assert coll.lexical_search("xrange", 5, ["text"], Filters.of(path_prefixes=["/nowhere"])) == {}


def test_what_the_index_holds_for_an_item() -> None:
    assert lexical.lexical_text("text", "set xrange", {}) == "set xrange"
    assert lexical.lexical_text("page", "Figure 1", {"ocr_text": "LAUNCH PAD"}) == "Figure 1\nLAUNCH PAD"
    assert lexical.lexical_text("text", "  ", {}) is None
    # both spaces active: CLIP's short chunks repeat the text space's long ones, and are indexed once
    assert lexical.lexical_text("text", "set xrange", {"spaces": ["clip"]}) is None
    assert lexical.lexical_text("text", "set xrange", {"spaces": ["text"]}) == "set xrange"
