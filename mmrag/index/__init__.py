"""FAISS indexes, one per embedding space of a collection: a rebuildable cache of the database's vectors."""

from __future__ import annotations

from mmrag.index.gpu import gpu_available
from mmrag.index.vector_index import IndexManifest, VectorIndex, VectorInputError, choose_nlist

__all__ = ["IndexManifest", "VectorIndex", "VectorInputError", "choose_nlist", "gpu_available"]
