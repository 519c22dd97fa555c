"""A small LRU cache of query embeddings: the same query text (a repeated search, a page of results, the
same question asked again) skips the text tower."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class QueryCache:
    """text -> float32 vector, least recently used out first. Thread-safe; stores and hands out copies, so
    no caller can change what another one gets. `capacity` 0 turns it off."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"query cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> np.ndarray | None:
        with self._lock:
            vector = self._entries.get(text)
            if vector is None:
                self.misses += 1
                return None
            self._entries.move_to_end(text)
            self.hits += 1
            return vector.copy()

    def put(self, text: str, vector: np.ndarray) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._entries[text] = np.array(vector, dtype=np.float32, copy=True)
            self._entries.move_to_end(text)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
