"""The vector-store interface: where a collection's vectors are searched.

One store per collection, holding one index per (space, modality) key ("clip.image", "text.text", ...):
within CLIP's space a text query scores every text chunk above every image (the modality gap), so each
modality gets its own ranked list to fuse. Ids are the database's item ids, never reused.

A backend says what kind of store it is, and the collection's consistency rules follow from it:

- a cache (`durable = False`, FAISS): the database keeps every vector; the store is rebuilt or repaired from
  it when it lags (a killed run), and saved every few files. `saved_generation` says which database
  generation the saved copy holds, so an open can trust it without comparing ids.
- durable storage (`durable = True`, Milvus): the store keeps its own copy, shared by every process and
  machine. An item's upsert is queued in the database with the item (store/pending.py) and the queue entry
  goes only once the store acknowledged it; what a killed process left is retried by the next writer.

Filters are pushed into the search itself (`Where`): a store that keeps payloads (`filters_payload`) turns
them into its own filter expression, the others take the ids the database matched (FAISS: an IDSelector).
Either way a selective filter still returns k hits when k items match.

A backend is a module `mmrag.index.<name>_store` with a class `Store`; `index.backend: <name>` picks it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mmrag.filters import Filters
from mmrag.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from mmrag.store.items import ItemPayload


def index_key(space: str, modality: str) -> str:
    return f"{space}.{modality}"


def split_key(key: str) -> tuple[str, str]:
    space, _, modality = key.partition(".")
    return space, modality


@dataclass(frozen=True)
class Where:
    """A search restricted by `filters`. `ids` gives the sorted item ids of the searched modality that the
    database accepts (asked only by stores that filter by id)."""

    filters: Filters
    ids: Callable[[], np.ndarray]


@dataclass
class IndexInfo:
    """What `mmrag stats` shows about one index."""

    count: int
    type: str
    model: str
    dim: int
    device: str
    backend: str


@dataclass
class OpenedIndex:
    """An index found by `VectorStore.open`: `problem` is set when it could not be used as it was (a torn
    file) and was started empty, to be refilled from the database."""

    key: str
    problem: str = ""


class VectorStore(ABC):
    kind: ClassVar[str]  # the index.backend value
    durable: ClassVar[bool]  # True: storage of its own; False: a cache of the database
    filters_payload: ClassVar[bool]  # True: filters go in as an expression over stored payloads

    def __init__(self, settings: Settings, collection: str) -> None:

        self.settings = settings
        self.collection = collection
        # (ids, vectors) the database holds for an index key, set by the collection: a cache rebuilds an
        # index from it when the index's file proves unreadable on first use (it loads lazily)
        self.rebuild_source: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None
        # index key -> why: indexes rebuilt that way since the collection last looked (it reports and saves)
        self.rebuilt_on_load: dict[str, str] = {}

    @abstractmethod
    def open(self, models: dict[str, tuple[str, int]]) -> list[OpenedIndex]:
        """Load (or connect to) the indexes present for the spaces in `models` (space -> (model id, dim)).
        Raises ModelMismatchError for an index built with another model."""

    @abstractmethod
    def index_keys(self) -> list[str]:
        """The index keys present, sorted."""

    @abstractmethod
    def ensure(self, key: str, model_id: str, dim: int) -> None:
        """Create the index `key` if it does not exist."""

    @abstractmethod
    def upsert(self, key: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[ItemPayload]) -> None:
        """Add or replace these items' vectors (unit rows). Returns once the store has them."""

    @abstractmethod
    def delete(self, ids: np.ndarray) -> None:
        """Remove these items from every index; ids not present are skipped."""

    @abstractmethod
    def search(
        self, key: str, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (n, k), ids int64 (n, k)), best first; empty slots have id -1, score -inf.
        With `where`, only items it accepts, and k of them whenever k exist."""

    @abstractmethod
    def ids(self, key: str) -> np.ndarray:
        """All ids in the index, sorted."""

    @abstractmethod
    def count(self, key: str) -> int: ...

    @abstractmethod
    def describe(self, key: str) -> IndexInfo: ...

    def saved_generation(self) -> int | None:
        """A cache: the database generation its saved copy holds (None: unknown). Durable stores: None."""
        return None

    def persist(self, generation: int) -> None:  # noqa: B027 - a durable store has nothing to do
        """A cache: save what changed since the last save, as holding `generation`."""

    def optimise(self, rebuild_source: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """A cache: relayout indexes whose size calls for it (flat <-> IVF), refilled from the database by
        `rebuild_source(key) -> (ids, vectors)`. Returns the keys rebuilt."""
        return []

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        pass


def store_class(backend: str) -> type[VectorStore]:
    try:
        module = importlib.import_module(f"mmrag.index.{backend}_store")
    except ImportError as exc:
        from mmrag.errors import ConfigError

        hint = " (pip install 'mmrag[milvus]')" if backend == "milvus" else ""
        raise ConfigError(f"vector store backend {backend!r} cannot be loaded{hint}: {exc}") from exc
    store: type[VectorStore] = module.Store
    return store


def open_store(settings: Settings, collection: str) -> VectorStore:
    """The configured backend's store for `collection` (not opened yet)."""
    return store_class(settings.index.backend)(settings, collection)


def describe_all(store: VectorStore) -> dict[str, dict[str, Any]]:
    return {key: vars(store.describe(key)) for key in store.index_keys()}
