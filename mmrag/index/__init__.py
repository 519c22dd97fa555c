"""Vector stores behind one interface (base.VectorStore): FAISS files, a cache of the database
(faiss_store, vector_index, gpu), and Milvus, durable storage (milvus_store). `index.backend` picks one."""

from __future__ import annotations

from typing import Any

from mmrag.index.base import IndexInfo, VectorStore, Where, index_key, open_store
from mmrag.index.manifest import IndexManifest

_FAISS_NAMES = {"VectorIndex", "VectorInputError", "choose_nlist", "gpu_available"}


def __getattr__(name: str) -> Any:
    """The FAISS-backed names import FAISS on first use: commands that read no vector never load it."""
    if name == "gpu_available":
        from mmrag.index.gpu import gpu_available

        return gpu_available
    if name in _FAISS_NAMES:
        from mmrag.index import vector_index

        return getattr(vector_index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IndexInfo",
    "IndexManifest",
    "VectorIndex",
    "VectorInputError",
    "VectorStore",
    "Where",
    "choose_nlist",
    "gpu_available",
    "index_key",
    "open_store",
]
