"""The lexical index: BM25 over the words of a collection's items (text chunks, captions, OCR text).

Dense embeddings miss exact terms that users type (command names, options, identifiers); a lexical list
finds them, and fusion merges it with the dense lists. The index lives in the database, in the table
`item_lexical` (migration 0008), written in the same transaction as the items it describes (`index_items`,
called by Collection while it stores a document), so it can never disagree with them; when an item is
deleted its row goes with it (a trigger on SQLite, a cascading foreign key on PostgreSQL).

- SQLite: FTS5 with porter stemming over unicode61 words; FTS5's own bm25().
- PostgreSQL: a tsvector per item ('english': stemming and stopwords) with a GIN index, scored with the
  same BM25 formula as FTS5 (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) / (n + 0.5)), at least 1e-6), over
  the collection's items.

User text never reaches either query language as syntax: a query is cut into words (letters and digits),
each word is quoted, and the words are OR-ed; quotes, `*`, `NEAR`, `-`, `:` and parentheses are separators.
Other databases have no lexical index (`available` says so).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

TABLE = "item_lexical"
POSTGRES_CONFIG = "english"  # as in migration 0008
MAX_QUERY_TERMS = 32  # a pasted paragraph is still a query, not a scan of every posting list
_DOCUMENT_CHUNK = 5000  # document ids per IN (...) list on SQLite (32,766 parameters at most)
_K1, _B = 1.2, 0.75
_WORD = re.compile(r"[^\W_]+")
# Dropped from queries (not from the index) unless nothing else is left: they match nearly every item, so
# they cost the most to score and say the least. PostgreSQL's 'english' configuration drops its own list.
_STOPWORD_TEXT = (
    "a an and are as at be but by for from has have how i in into is it its of on or so that the their "
    "then there these this to was were what when where which who why will with"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_warned: set[str] = set()


def query_terms(text: str | None) -> list[str]:
    """The words of a query, lowercased, each once, in order, at most MAX_QUERY_TERMS: the only part of
    what a user typed that reaches the index (no operator, quote or column filter survives)."""
    words = list(dict.fromkeys(_WORD.findall((text or "").casefold())))
    content = [w for w in words if w not in STOPWORDS]
    return (content or words)[:MAX_QUERY_TERMS]


def lexical_text(modality: str, text: str | None, meta: Mapping[str, Any] | None) -> str | None:
    """What the index holds for an item: its text, plus the OCR text of a rendered page (an image's text is
    already its caption and OCR text). None when there are no words, and for CLIP's own short chunks when
    the text space has longer chunks of the same words (meta "spaces": ["clip"]): they are indexed once."""
    spaces = (meta or {}).get("spaces")
    if modality == "text" and isinstance(spaces, list) and "text" not in spaces:
        return None
    parts = [text or ""]
    ocr = (meta or {}).get("ocr_text")
    if modality == "page" and isinstance(ocr, str) and ocr.strip() and ocr not in parts[0]:
        parts.append(ocr)
    joined = "\n".join(p for p in parts if p.strip())
    return joined if _WORD.search(joined) else None


def available(session: Session) -> bool:
    """Whether this database has the lexical index (SQLite without FTS5, and other databases, do not)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return True
    if dialect != "sqlite":
        _warn_once(dialect, f"no lexical index on {dialect}: lexical search is off (SQLite and PostgreSQL)")
        return False
    found = session.execute(sql("SELECT 1 FROM sqlite_master WHERE name = :t"), {"t": TABLE}).first()
    if found is None:
        _warn_once("fts5", "this SQLite has no FTS5: lexical search is off (a Python built with FTS5 has it)")
    return found is not None


def index_items(session: Session, collection: str, entries: Iterable[tuple[int, str, str | None]]) -> int:
    """Inside the transaction that writes the items: index each (item id, modality, text). Items without
    words are skipped. Returns how many rows were written."""
    rows = [
        {"id": item_id, "c": collection, "m": modality, "t": words}
        for item_id, modality, words in entries
        if words and _WORD.search(words)
    ]
    if not rows or not available(session):
        return 0
    if session.get_bind().dialect.name == "sqlite":
        statement = f"INSERT INTO {TABLE} (rowid, text, collection, modality) VALUES (:id, :t, :c, :m)"
    else:
        statement = (
            f"INSERT INTO {TABLE} (item_id, collection, modality, tsv, length) "
            "SELECT :id, :c, :m, v.tsv, "
            "(SELECT coalesce(sum(array_length(u.positions, 1)), 0) FROM unnest(v.tsv) u) "
            f"FROM (SELECT to_tsvector('{POSTGRES_CONFIG}', :t) AS tsv) v"
        )
    session.execute(sql(statement), rows)
    return len(rows)


class CommonWords:
    """Query words that occur in more than half of the indexed items, remembered until the database changes.

    BM25 gives such a word no weight (its idf is clamped to 1e-6, see above), yet matching it makes the
    index score every item that holds it: "a photo of a ..." starts every caption the caption road writes,
    and "photo" in a query cost 1-2 s at 100k items on SQLite. Leaving these words out of the match changes
    no score; only items that share nothing else with the query (scored ~0) are no longer listed. PostgreSQL
    leaves them out in its query (it counts each word's items there anyway)."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._rows = 0
        self._common: dict[str, bool] = {}

    def drop(self, session: Session, terms: list[str], generation: int) -> list[str]:
        """`terms` without the common words; all of them when every one is common."""
        if session.get_bind().dialect.name != "sqlite":
            return terms
        if generation != self._generation:
            self._generation, self._common = generation, {}
            self._rows = int(session.execute(sql(f"SELECT count(*) FROM {TABLE}")).scalar() or 0)
        half = self._rows // 2
        for term in terms:
            if term not in self._common:
                found = session.execute(
                    sql(f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} WHERE {TABLE} MATCH :q LIMIT :n)"),
                    {"q": f'"{term}"', "n": half + 1},
                ).scalar()
                self._common[term] = half > 0 and int(found or 0) > half
        kept = [term for term in terms if not self._common[term]]
        return kept or terms


def search(
    session: Session,
    collection: str,
    text: str | None,
    depth: int,
    modalities: Sequence[str],
    common: tuple[CommonWords, int] | None = None,
    documents: Sequence[int] | None = None,
) -> dict[str, list[tuple[int, float]]]:
    """Modality -> up to `depth` (item id, BM25 score) pairs, best first, for the items of `collection`
    that hold any word of `text`. Empty when the query has no words or the database no lexical index.
    `common`: (a CommonWords cache, the database generation it is valid for) leaves out words that carry
    no weight. `documents`: only the items of these documents (a search filter, applied inside the
    search as the vector stores apply it, so a selective filter still gets `depth` hits); None = all."""
    terms = query_terms(text)
    if documents is not None and not documents:
        return {}
    if not terms or not modalities or depth < 1 or not available(session):
        return {}
    if common is not None:
        terms = common[0].drop(session, terms, common[1])
    if session.get_bind().dialect.name == "sqlite":
        return _search_sqlite(session, collection, terms, depth, modalities, documents)
    return _search_postgres(session, collection, terms, depth, modalities, documents)


def _search_sqlite(
    session: Session,
    collection: str,
    terms: list[str],
    depth: int,
    modalities: Sequence[str],
    documents: Sequence[int] | None,
) -> dict[str, list[tuple[int, float]]]:
    match = " OR ".join(f'"{term}"' for term in terms)  # terms hold letters and digits only
    plain = sql(
        f"SELECT rowid, rank FROM {TABLE} WHERE {TABLE} MATCH :q AND collection = :c "
        "AND modality = :m ORDER BY rank LIMIT :n"
    )
    restricted = sql(
        f"SELECT {TABLE}.rowid, {TABLE}.rank FROM {TABLE} JOIN items ON items.id = {TABLE}.rowid "
        f"WHERE {TABLE} MATCH :q AND {TABLE}.collection = :c AND {TABLE}.modality = :m "
        f"AND items.document_id IN :ds ORDER BY {TABLE}.rank LIMIT :n"
    ).bindparams(bindparam("ds", expanding=True))
    ids = sorted({int(d) for d in documents}) if documents is not None else []
    out: dict[str, list[tuple[int, float]]] = {}
    for modality in modalities:
        params = {"q": match, "c": collection, "m": modality, "n": depth}
        if documents is None:
            rows = session.execute(plain, params).all()
        else:  # the best `depth` of each chunk of documents, then the best `depth` of those
            rows = []
            for start in range(0, len(ids), _DOCUMENT_CHUNK):
                chunk = ids[start : start + _DOCUMENT_CHUNK]
                rows.extend(session.execute(restricted, {**params, "ds": chunk}).all())
            rows = sorted(rows, key=lambda row: (row[1], row[0]))[:depth]
        if rows:
            out[modality] = [
                (int(item_id), -float(rank)) for item_id, rank in rows
            ]  # bm25(): lower is better
    return out


# BM25 in SQL, as FTS5 computes it, over the collection's rows. Term frequencies come from the tsvector's
# positions (PostgreSQL keeps up to 256 per word); N, the mean length and each word's document frequency
# are counted per query (one index probe per word).
_POSTGRES_BM25 = f"""
WITH words AS (SELECT DISTINCT u.lexeme FROM unnest(to_tsvector('{POSTGRES_CONFIG}', :q)) u),
stats AS (SELECT count(*) AS n, coalesce(avg(length), 1) AS avgdl FROM {TABLE} WHERE collection = :c),
weights AS (
  SELECT w.lexeme, greatest(ln((s.n - d.n + 0.5) / (d.n + 0.5)), 1e-6) AS idf, 2 * d.n > s.n AS common
  FROM words w CROSS JOIN stats s CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM {TABLE} l WHERE l.collection = :c AND l.tsv @@ quote_literal(w.lexeme)::tsquery
  ) d
),
matched AS (  -- words in more than half of the items weigh nothing (idf clamped) and cost the most
  SELECT lexeme FROM weights WHERE NOT common
  UNION ALL SELECT lexeme FROM weights WHERE NOT EXISTS (SELECT 1 FROM weights WHERE NOT common)
),
scored AS (
  SELECT l.item_id, l.modality,
         sum(w.idf * (u.tf * {_K1 + 1}) / (u.tf + {_K1} * ({1 - _B} + {_B} * l.length / s.avgdl))) AS score
  FROM {TABLE} l CROSS JOIN stats s
  CROSS JOIN LATERAL (SELECT x.lexeme, array_length(x.positions, 1) AS tf FROM unnest(l.tsv) x) u
  JOIN weights w ON w.lexeme = u.lexeme
  WHERE l.collection = :c AND l.modality = ANY(:ms) {{restriction}}
    AND l.tsv @@ (SELECT array_to_string(array_agg(quote_literal(lexeme)), ' | ')::tsquery FROM matched)
  GROUP BY l.item_id, l.modality
),
ranked AS (
  SELECT item_id, modality, score,
         row_number() OVER (PARTITION BY modality ORDER BY score DESC, item_id) AS position
  FROM scored
)
SELECT item_id, modality, score FROM ranked WHERE position <= :n ORDER BY modality, position
"""


def _search_postgres(
    session: Session,
    collection: str,
    terms: list[str],
    depth: int,
    modalities: Sequence[str],
    documents: Sequence[int] | None,
) -> dict[str, list[tuple[int, float]]]:
    params: dict[str, Any] = {"q": " ".join(terms), "c": collection, "ms": list(modalities), "n": depth}
    restriction = ""
    if documents is not None:
        restriction = "AND l.item_id IN (SELECT id FROM items WHERE document_id = ANY(:ds))"
        params["ds"] = sorted({int(d) for d in documents})
    rows = session.execute(sql(_POSTGRES_BM25.replace("{restriction}", restriction)), params).all()
    out: dict[str, list[tuple[int, float]]] = {}
    for item_id, modality, score in rows:
        out.setdefault(modality, []).append((int(item_id), float(score)))
    return out


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
