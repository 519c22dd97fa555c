"""What a saved FAISS index holds, read without FAISS: `manifest.json` beside `index.faiss`.

Commands that only need counts, layouts and models (`mmrag stats`, an `mmrag index` that finds nothing
changed) read these and never import FAISS or load a vector.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mmrag.errors import IndexCorruptError, ModelMismatchError

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
METRIC = "inner_product"


@dataclass(kw_only=True)
class IndexManifest:
    """What an index file holds and how it was built; written next to it as manifest.json."""

    space: str  # embedding space, e.g. "clip", "text"
    model_id: str  # e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k"
    dim: int
    count: int  # vectors searchable (an HNSW file may also hold removed ones, id -1)
    index_type: str  # "flat" | "ivf{nlist},flat" | "hnsw{M},flat"
    metric: str = METRIC
    index_sha256: str  # of the saved index file; "" for an index never saved or loaded
    format_version: int = FORMAT_VERSION
    updated_at: str  # ISO 8601, UTC, of the last change to the contents

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> IndexManifest:
        """Parse a manifest; anything missing or mistyped means the file is corrupt."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            manifest = cls(**{field.name: raw[field.name] for field in fields(cls)})
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"index manifest {source} is unreadable ({exc!r})") from exc
        for name in ("dim", "count", "format_version"):
            value = getattr(manifest, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise IndexCorruptError(f"index manifest {source}: {name} must be a non-negative integer")
        for name in ("space", "model_id", "index_type", "metric", "index_sha256", "updated_at"):
            if not isinstance(getattr(manifest, name), str):
                raise IndexCorruptError(f"index manifest {source}: {name} must be a string")
        return manifest


def read_manifest(
    directory: Path, *, expected_model_id: str | None = None, expected_dim: int | None = None
) -> IndexManifest:
    """The manifest of the index saved in `directory`, checked against the configured model.

    Raises IndexCorruptError when it is missing, unreadable or of another format, or when the index file
    beside it is missing; ModelMismatchError when it was built with another model or dimension.
    """
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise IndexCorruptError(f"no index manifest at {manifest_path}")
    manifest = IndexManifest.from_json(manifest_path.read_text(encoding="utf-8"), manifest_path)
    if manifest.format_version != FORMAT_VERSION:
        raise IndexCorruptError(
            f"index at {directory} has format version {manifest.format_version}; "
            f"this mmrag reads version {FORMAT_VERSION}"
        )
    _check_model(directory, manifest, expected_model_id, expected_dim)
    if not (directory / INDEX_FILE).is_file():
        raise IndexCorruptError(f"index file {directory / INDEX_FILE} is missing (its manifest is there)")
    return manifest


def _check_model(
    directory: Path, manifest: IndexManifest, expected_model_id: str | None, expected_dim: int | None
) -> None:
    model_differs = expected_model_id is not None and expected_model_id != manifest.model_id
    dim_differs = expected_dim is not None and expected_dim != manifest.dim
    if model_differs or dim_differs:
        configured_model = expected_model_id if expected_model_id is not None else manifest.model_id
        configured_dim = expected_dim if expected_dim is not None else manifest.dim
        raise ModelMismatchError(
            f"index at {directory} was built with model {manifest.model_id} (dim {manifest.dim}); "
            f"the configured model is {configured_model} (dim {configured_dim}). Use the model the "
            "collection was built with, or index into a new collection/data dir."
        )
