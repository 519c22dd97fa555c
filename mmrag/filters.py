"""What a search may be restricted to: modalities, documents, a folder, document metadata.

One value type for every caller (CLI `--where`, the REST API, the library) and every layer that applies it:
the database turns it into SQL (`mmrag.store.items.matching_item_ids`), a vector store pushes it into its
search (Milvus: a filter expression; FAISS: an IDSelector over the ids the database matched), so a selective
filter still returns k hits without searching deeper and throwing most of them away.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmrag.errors import MmragError

MetadataValue = str | int | float | bool
MODALITIES = ("image", "text", "page")


class FilterError(MmragError, ValueError):
    """A filter that cannot be applied: an unknown key, a value of the wrong kind."""


@dataclass(frozen=True)
class Filters:
    """Every condition must hold (AND); within one condition any listed value may match (OR)."""

    modalities: tuple[str, ...] = ()
    document_ids: frozenset[int] = frozenset()
    path_prefixes: tuple[str, ...] = ()  # a file, or a folder and everything under it
    metadata: tuple[tuple[str, MetadataValue], ...] = field(default=())  # the document's metadata

    def __post_init__(self) -> None:
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise FilterError(f"unknown modality {sorted(unknown)[0]!r}: use {', '.join(MODALITIES)}")
        for key, value in self.metadata:
            if not key or not isinstance(key, str):
                raise FilterError("a metadata filter needs a key")
            if not isinstance(value, (str, int, float, bool)):
                raise FilterError(
                    f"metadata filter {key!r}: only a string, number or true/false can be matched, "
                    f"not {type(value).__name__}"
                )

    @classmethod
    def of(
        cls,
        modalities: Iterable[str] | None = None,
        document_ids: Iterable[int] | None = None,
        path_prefixes: Iterable[str] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> Filters:
        prefixes = tuple(_folder(p) for p in path_prefixes or ())
        return cls(
            tuple(dict.fromkeys(modalities or ())),
            frozenset(int(i) for i in document_ids or ()),
            tuple(dict.fromkeys(prefixes)),
            tuple(sorted((metadata or {}).items())),
        )

    @classmethod
    def parse(cls, conditions: Iterable[str]) -> Filters:
        """From `KEY=VALUE` strings (`mmrag query --where`): modality=image, document=12, path=/photos,
        meta.KEY=VALUE (VALUE read as JSON when it is a number or true/false, else as text). Repeating a
        key means any of its values."""
        modalities: list[str] = []
        documents: list[int] = []
        prefixes: list[str] = []
        metadata: dict[str, MetadataValue] = {}
        for condition in conditions:
            key, sep, value = condition.partition("=")
            key = key.strip()
            if not sep or not value:
                raise FilterError(f"filter {condition!r} is not KEY=VALUE (e.g. modality=image)")
            if key == "modality":
                modalities.append(value)
            elif key in ("document", "document_id"):
                try:
                    documents.append(int(value))
                except ValueError:
                    raise FilterError(f"document={value!r}: a document id is a number") from None
            elif key == "path":
                prefixes.append(os.path.realpath(os.path.expanduser(value)))  # as indexed: resolved
            elif key.startswith("meta.") and len(key) > 5:
                if key[5:] in metadata:
                    raise FilterError(f"metadata key {key[5:]!r} given twice; a document has one value")
                metadata[key[5:]] = _metadata_value(value)
            else:
                raise FilterError(
                    f"unknown filter {key!r}: use modality=, document=, path= or meta.KEY= "
                    "(e.g. --where modality=image --where meta.owner=ann)"
                )
        return cls.of(modalities, documents, prefixes, metadata)

    @property
    def narrows_items(self) -> bool:
        """Whether the filter looks at an item's document (modality is which index is searched)."""
        return bool(self.document_ids or self.path_prefixes or self.metadata)

    @property
    def empty(self) -> bool:
        return not (self.modalities or self.narrows_items)

    def wants_modality(self, modality: str) -> bool:
        return not self.modalities or modality in self.modalities

    def accepts_document(self, document_id: int, path: str, meta: Mapping[str, Any] | None) -> bool:
        """The same test in Python, for results a store returned (a stale entry must never slip through)."""
        if self.document_ids and document_id not in self.document_ids:
            return False
        if self.path_prefixes and not any(is_under(path, prefix) for prefix in self.path_prefixes):
            return False
        stored = meta or {}
        return all(key in stored and same_value(stored[key], value) for key, value in self.metadata)


def is_under(path: str, folder: str) -> bool:
    """`path` is `folder` itself or lies under it (by path components, not string prefix)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def same_value(stored: Any, wanted: Any) -> bool:
    """JSON equality: true is not 1 (Python says it is), 2024 is 2024.0."""
    return isinstance(stored, bool) == isinstance(wanted, bool) and stored == wanted


def _folder(path: str) -> str:
    return path.rstrip(os.sep) or os.sep


def _metadata_value(raw: str) -> MetadataValue:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (int, float, bool, str)) else raw
