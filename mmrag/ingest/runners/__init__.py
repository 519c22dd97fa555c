"""Runners schedule the ingest stages (mmrag.ingest.stages): `local` in this process, `ray` on a cluster.
Both take the same roots and report the same way, and leave the same rows behind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mmrag.collection import Collection
from mmrag.settings import Settings

if TYPE_CHECKING:
    from mmrag.ingest.runners.local import LocalRunner
    from mmrag.ingest.runners.ray import RayRunner
    from mmrag.ingest.vectorise import Vectoriser


def make_runner(
    name: str,
    settings: Settings,
    collection: Collection,
    vectoriser: Vectoriser,
    document_meta: Mapping[str, dict[str, Any]] | None = None,
) -> LocalRunner | RayRunner:
    """The runner called `name` ("local" or "ray"). The Ray runner builds its models on the cluster; the
    vectoriser's database (for the caption cache) is all it takes from it."""
    if name == "ray":
        from mmrag.ingest.runners.ray import RayRunner

        return RayRunner(settings, collection, document_meta=document_meta)
    from mmrag.ingest.runners.local import LocalRunner

    return LocalRunner(settings, collection, vectoriser, document_meta=document_meta)
