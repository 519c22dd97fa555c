"""Start-up costs where users wait: `mmrag --help`, `mmrag stats`, an `mmrag index` that finds nothing
changed, and the first `mmrag query`, each a fresh process, wall time (median of a few runs).

`--help` is the floor: a command that loads no model (stats, the no-change index) should cost about what
starting Python and mmrag's CLI costs, not what loading torch and a model costs. The collection is a real
one: photos and a Markdown guide indexed with the offline profile (no hub).

    python -m bench --steps startup     (or: python -m bench.startup [--runs 5] [--work DIR])
"""

from __future__ import annotations

import argparse
import os
import resource
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


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: Python writes and reads its bytecode caches (pip compiles an
    installed package; an editable one is compiled on first run). Test and CI shells often set
    PYTHONDONTWRITEBYTECODE, which makes every start compile mmrag's own modules from source again."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run(argv: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system, of the child) of one `python -m mmrag ARGV`, and its stderr."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mmrag", *argv], capture_output=True, text=True, env=_user_env()
    )
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"mmrag {' '.join(argv)} failed: {done.stderr[-2000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, cpu, done.stderr


def run_startup(work: Path, runs: int = 5, first_query: bool = True) -> dict[str, Any]:
    """The commands in interleaved rounds (help, stats, index, query; again ...): a burst of other work on
    a shared machine then slows every command of a round alike, not one command's every run. first_query:
    False leaves out the one command that loads a model (`--quick`: what is checked is the bench's code)."""
    from tests.realdata import write_markdown, write_photos

    library, data = work / "library", work / "data"
    write_photos(library / "photos", PHOTOS)
    write_markdown(library / "notes" / "photos.md")
    base = ["--data-dir", str(data)]
    subprocess.run(
        [sys.executable, "-m", "mmrag", "--config", "offline", *base, "index", str(library)],
        check=True,
        capture_output=True,
        env=_user_env(),  # also writes the bytecode caches, as a user's first run does
    )
    commands = {
        "help": ["--help"],
        "stats": [*base, "stats"],
        "index_no_change": [*base, "index", str(library)],
        "first_query": [*base, "query", "a cat on a sofa"],
    }
    if not first_query:
        del commands["first_query"]
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            wall, cpu, stderr = _run(argv)
            if name == "index_no_change":
                assert "indexed 0 files" in stderr, stderr
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {
        "files": len(PHOTOS) + 1,
        "runs": runs,
        "seconds": {name: statistics.median(values) for name, values in walls.items()},
        "cpu_seconds": {name: statistics.median(values) for name, values in cpus.items()},
        "all_seconds": walls,
    }


def print_startup(result: dict[str, Any]) -> None:
    seconds, cpu = result["seconds"], result["cpu_seconds"]
    table = Table(title=f"start-up, {result['files']} files, median of {result['runs']} interleaved rounds")
    for column in ("command", "wall", "x mmrag --help", "CPU", "CPU x mmrag --help"):
        table.add_column(column, justify="right" if column != "command" else "left")
    labels = {
        "help": "mmrag --help (floor)",
        "stats": "mmrag stats",
        "index_no_change": "mmrag index (nothing changed)",
        "first_query": "mmrag query (first: loads the text model)",
    }
    for key, label in labels.items():
        if key not in seconds:
            continue
        table.add_row(
            label,
            f"{seconds[key]:.2f} s",
            f"{seconds[key] / seconds['help']:.2f}",
            f"{cpu[key]:.2f} s",
            f"{cpu[key] / cpu['help']:.2f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        result = run_startup(args.work or Path(scratch), args.runs)
    print_startup(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
