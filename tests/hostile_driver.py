"""Index the hostile corpus one class at a time, in this process, and print one JSON line per class:
its files' outcomes and this process's peak RSS so far. Run by tests/test_hostile.py in a subprocess, so
the peak belongs to mmrag alone:

    python -m tests.hostile_driver CORPUS_DIR   (settings from MMRAG_* variables)

Peak RSS only grows, so a class whose peak exceeds a bound is the first class that crossed it.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from mmrag.ingest.pipeline import FileOutcome, Indexer, NoProgress
from mmrag.runtime import open_runtime
from mmrag.settings import load_settings


class _Outcomes(NoProgress):
    def __init__(self) -> None:
        self.outcomes: list[FileOutcome] = []

    def file_done(self, outcome: FileOutcome) -> None:
        self.outcomes.append(outcome)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(corpus: Path) -> None:
    runtime = open_runtime(load_settings())
    print(json.dumps({"class": "", "peak_rss_mb": peak_rss_mb()}), flush=True)  # models loaded, nothing read
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir()):
        sink = _Outcomes()
        indexer = Indexer(runtime.settings, runtime.collection, runtime.vectoriser())
        with runtime.collection.writer():
            indexer.run([folder], progress=sink)
        files = {
            Path(o.path).name: {"status": o.status, "reason": o.reason, "items": o.items}
            for o in sink.outcomes
        }
        print(json.dumps({"class": folder.name, "files": files, "peak_rss_mb": peak_rss_mb()}), flush=True)
    runtime.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
