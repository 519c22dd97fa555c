"""Vector stores behind one interface (base.VectorStore): FAISS files, a cache of the database
(faiss_store, vector_index, gpu), and Milvus, durable storage (milvus_store). `index.backend` picks one."""

from __future__ import annotations

from mmrag.index.base import IndexInfo, VectorStore, Where, index_key, open_store
from mmrag.index.gpu import gpu_available
from mmrag.index.vector_index import IndexManifest, VectorIndex, VectorInputError, choose_nlist

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
