"""Start-up costs where users wait: `mmrag --help`, `mmrag stats`, an `mmrag index` that finds nothing
changed, and the first `mmrag query`, each a fresh process, wall time (median of a few runs).

`--help` is the floor: a command that loads no model (stats, the no-change index) should cost about what
starting Python and mmrag's CLI costs, not what loading torch and a model costs. The collection is a real
one: photos and a Markdown guide indexed with the offline profile (no hub).

    python -m bench --steps startup     (or: python -m bench.startup [--runs 3] [--work DIR])
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True, width=160)
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock", "china", "flower"]


def _timed(argv: list[str], runs: int) -> tuple[float, str]:
    """Median wall seconds of `python -m mmrag ARGV` over `runs` runs, and the last run's stderr."""
    times = []
    stderr = ""
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mmrag", *argv], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"mmrag {' '.join(argv)} failed: {done.stderr[-2000:]}")
        stderr = done.stderr
    return statistics.median(times), stderr


def run_startup(work: Path, runs: int = 3) -> dict[str, Any]:
    from tests.realdata import write_markdown, write_photos

    library, data = work / "library", work / "data"
    write_photos(library / "photos", PHOTOS)
    write_markdown(library / "notes" / "photos.md")
    base = ["--data-dir", str(data)]
    subprocess.run(
        [sys.executable, "-m", "mmrag", "--config", "offline", *base, "index", str(library)],
        check=True,
        capture_output=True,
    )
    help_s, _ = _timed(["--help"], runs)
    stats_s, _ = _timed([*base, "stats"], runs)
    index_s, index_log = _timed([*base, "index", str(library)], runs)
    assert "indexed 0 files" in index_log, index_log
    query_s, _ = _timed([*base, "query", "a cat on a sofa"], runs)
    return {
        "files": len(PHOTOS) + 1,
        "runs": runs,
        "seconds": {"help": help_s, "stats": stats_s, "index_no_change": index_s, "first_query": query_s},
    }


def print_startup(result: dict[str, Any]) -> None:
    seconds = result["seconds"]
    floor = seconds["help"]
    table = Table(title=f"start-up, {result['files']} files, median of {result['runs']} runs")
    for column in ("command", "wall", "x mmrag --help"):
        table.add_column(column, justify="right" if column != "command" else "left")
    labels = {
        "help": "mmrag --help (floor)",
        "stats": "mmrag stats",
        "index_no_change": "mmrag index (nothing changed)",
        "first_query": "mmrag query (first: loads the text model)",
    }
    for key, label in labels.items():
        table.add_row(label, f"{seconds[key]:.2f} s", f"{seconds[key] / floor:.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        result = run_startup(args.work or Path(scratch), args.runs)
    print_startup(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
