"""One result per picture: hits that are near-duplicates of a better-ranked hit are folded into it.

The same photo as a file, in a PDF and as a resized copy would otherwise fill a page of results three times.
The best-ranked copy stays, in its place; the others (whether or not they were hits) are listed with it as
"also in: report.pdf p.3, copy.jpg". Groups come from mmrag.store.duplicates.other_copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmrag.store.duplicates import ImageLocation

if TYPE_CHECKING:
    from mmrag.retrieve.search import Hit


@dataclass
class FoldedHit:
    hit: Hit
    also_in: list[ImageLocation] = field(default_factory=list)

    def also_in_text(self) -> str:
        """'also in: report.pdf p.3, copy.jpg', or '' when the picture is nowhere else."""
        return "also in: " + ", ".join(location.label() for location in self.also_in) if self.also_in else ""


def fold_duplicates(hits: Sequence[Hit], copies: Mapping[int, Sequence[ImageLocation]]) -> list[FoldedHit]:
    """`hits` in their order, each picture once: a hit whose item is a copy of an earlier hit's is dropped,
    and every hit carries the other copies of its picture. `copies` maps item id -> its other copies."""
    folded: list[FoldedHit] = []
    shown: set[int] = set()
    for hit in hits:
        if hit.item_id in shown:
            continue
        others = list(copies.get(hit.item_id, ()))
        shown.add(hit.item_id)
        shown.update(location.item_id for location in others)
        folded.append(FoldedHit(hit, others))
    return folded


def format_groups(groups: Sequence[Sequence[ImageLocation]]) -> str:
    """What `mmrag duplicates` prints: each group, its first member, then '= ' and the other copies."""
    if not groups:
        return "no near-duplicate images"
    lines = [f"{len(groups)} groups of near-duplicate images, {sum(len(g) for g in groups)} images"]
    for number, group in enumerate(groups, start=1):
        lines.append(f"group {number} ({len(group)} images)")
        for index, location in enumerate(group):
            where = f"{location.path}" + (f" p.{location.page}" if location.page is not None else "")
            lines.append(f"  {'  ' if index == 0 else '= '}{where}  [{location.width}x{location.height}]")
    return "\n".join(lines)
