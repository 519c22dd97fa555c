"""Stages after fusion that think in pages: one hit per page, and contents pages below what they list.

- `group_pages`: the text chunks (and the rendered image) of one PDF page become one hit: the best one is
  shown, the others are counted (`Hit.more_on_page`). A long page would otherwise fill the top k with its
  chunks, and a user sees pages, not chunks. A text or Markdown file has no pages and counts as one (on
  the photo set its sections' chunks took the places of the photos they describe). Images, in a page or
  not, stay hits of their own: they are pictures a user looks for (near-duplicate folding gives each
  picture one hit).
- `demote_list_pages`: a table of contents or index page (recognised at ingest, mmrag.ingest.listpages)
  holds every title of a manual, so a title query finds it before the page the title is about. Such a hit
  moves to just below the last hit of the same document that it points to (by printed page number); it is
  never dropped, and a contents page that points to nothing among the hits keeps its place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mmrag.ingest.listpages import LIST_PAGE_KEY, PAGE_LABEL_KEY

if TYPE_CHECKING:
    from mmrag.retrieve.search import Hit

PAGE_MODALITIES = frozenset({"text", "page"})  # what a page hit stands for; images stay their own hits


def page_key(hit: Hit) -> tuple[str, int] | None:
    """(document, page) for a hit that belongs to a page hit, page 0 for a text file (its pages are not
    known: the file is one page); None for a hit that stands alone (an image)."""
    if hit.modality not in PAGE_MODALITIES:
        return None
    return (hit.path, hit.page or 0)


def group_pages(hits: Sequence[Hit]) -> list[Hit]:
    """`hits` (best first) with each page once, at the place of its best hit, which it shows; the page's
    other hits are dropped and counted in `more_on_page` of the one kept."""
    kept: list[Hit] = []
    where: dict[tuple[str, int], int] = {}
    for hit in hits:
        key = page_key(hit)
        if key is None:
            kept.append(hit)
        elif key in where:
            first = kept[where[key]]
            kept[where[key]] = replace(first, more_on_page=first.more_on_page + 1 + hit.more_on_page)
        else:
            where[key] = len(kept)
            kept.append(hit)
    return kept


def demote_list_pages(hits: Sequence[Hit], meta_of: Mapping[int, Mapping[str, Any]]) -> list[Hit]:
    """`hits` with every list page (contents, index) moved to just below the last hit of its document that
    it points to; the order of all other hits is kept. `meta_of` maps item id -> item meta."""
    ordered = list(hits)
    pointers = {
        hit.item_id: set(points)
        for hit in ordered
        if isinstance(points := meta_of.get(hit.item_id, {}).get(LIST_PAGE_KEY), list)
    }
    for item_id in [hit.item_id for hit in ordered if hit.item_id in pointers]:
        position = next(i for i, hit in enumerate(ordered) if hit.item_id == item_id)
        listing = ordered[position]
        last_target = max(
            (
                i
                for i, hit in enumerate(ordered)
                if i > position
                and hit.path == listing.path
                and hit.item_id not in pointers
                and _label(hit, meta_of) in pointers[item_id]
            ),
            default=None,
        )
        if last_target is not None:
            ordered.insert(last_target, ordered.pop(position))
    return ordered


def _label(hit: Hit, meta_of: Mapping[int, Mapping[str, Any]]) -> str | None:
    """The number printed on the hit's page, else its position in the file."""
    label = meta_of.get(hit.item_id, {}).get(PAGE_LABEL_KEY)
    if label is not None:
        return str(label)
    return str(hit.page) if hit.page is not None else None
