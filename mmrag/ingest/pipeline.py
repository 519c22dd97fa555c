"""Ingest: discover files -> skip unchanged -> extract items -> embed in batches -> store and index.

The stages live in mmrag.ingest.stages and the runners that schedule them in mmrag.ingest.runners; this
module keeps the names the CLI, the service and the tests have always used: `Indexer` is the local runner.
"""

from __future__ import annotations

from mmrag.ingest.plan import FileOutcome, IndexReport, NoProgress, ProgressSink
from mmrag.ingest.runners.local import LocalRunner
from mmrag.ingest.stages import is_under

Indexer = LocalRunner
_is_under = is_under  # `mmrag delete` takes it from here

__all__ = ["FileOutcome", "IndexReport", "Indexer", "LocalRunner", "NoProgress", "ProgressSink"]
