"""How many threads the numeric libraries use: one setting (`threads`, `mmrag --threads N`), applied once per
process by the CLI and by `mmrag serve` before any model loads.

torch, FAISS (both OpenMP) and ONNX Runtime (RapidOCR) each start one worker per core by default. On a
machine shared with other jobs, or in the service where several requests compute at once, those teams
outnumber the cores and spin waiting for each other: on a loaded 2-core machine one thread encoded a CLIP
query 5x faster than two. OpenMP reads OMP_NUM_THREADS and OMP_WAIT_POLICY when the library loads, and
threads started later (the service's request pool) take their count from there, so the environment is set
as well as the libraries already imported.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

# "auto" never goes past this: a single query's matrices are too small to split further, and a batch
# gains little beyond it on CPU while other requests wait.
_AUTO_MAX_THREADS = 8

_applied: int | None = None


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_threads(requested: int) -> int:
    """The thread count for a `threads` setting: itself when positive; for 0 (auto), one per usable core
    up to 8, leaving one core free on machines with up to four (for image decoding, the database and
    whoever else uses the machine)."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0 = auto), got {requested}")
    if requested:
        return requested
    cores = usable_cores()
    return max(1, min(_AUTO_MAX_THREADS, cores - 1 if cores <= 4 else cores))


def apply_threads(requested: int) -> int:
    """Set torch, FAISS and OpenMP to `resolve_threads(requested)` threads, and record it for ONNX Runtime
    sessions made later (`onnx_threads`). Imports nothing heavy: a library not yet imported picks the count
    up from the environment when it loads. Returns the count."""
    global _applied
    threads = resolve_threads(requested)
    # PASSIVE: an idle OpenMP worker sleeps instead of spinning; spinning teams starve each other when
    # requests run concurrently or other jobs share the cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if requested or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    else:  # auto, and the user's environment already says how many: theirs wins
        threads = _positive_int(os.environ["OMP_NUM_THREADS"]) or threads
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    if "faiss" in sys.modules:
        import faiss

        faiss.omp_set_num_threads(threads)
    _applied = threads
    log.debug("numeric libraries set to %d thread(s)", threads)
    return threads


def onnx_threads() -> int | None:
    """Intra-op threads for ONNX Runtime sessions: the applied count, or None (ONNX Runtime's own default)
    when `apply_threads` has not run in this process."""
    return _applied


def _positive_int(raw: str) -> int | None:
    try:
        value = int(raw.split(",")[0])
    except ValueError:
        return None
    return value if value > 0 else None
