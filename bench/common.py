"""What every benchmark step needs: a clock, percentiles, process memory, a description of the machine, and
a ViT-B-32 with random weights saved as a checkpoint (mmrag refuses weightless CLIP ids, and no real CLIP
weights install offline; a random ViT-B-32 costs exactly what a trained one costs)."""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from mmrag.evaluation.metrics import percentile

T = TypeVar("T")

CLIP_ARCH = "ViT-B-32"
_VERSIONED = ("mmrag", "torch", "open_clip_torch", "faiss-cpu", "pymupdf", "sentence-transformers", "numpy")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """fn()'s result and its wall time in seconds."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds, and sequential queries per second (1 / mean)."""
    ms = [s * 1000.0 for s in seconds]
    mean = sum(ms) / len(ms)
    return {
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": mean,
        "qps": 1000.0 / mean if mean > 0 else float("inf"),
    }


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 where that is missing)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def machine_info() -> dict[str, Any]:
    """CPU model and count, memory, GPU, thread counts and library versions: what the numbers depend on."""
    import faiss
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(_memory_total_bytes() / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {},
    }
    for package in _VERSIONED:
        try:
            info["versions"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info["versions"][package] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def random_clip_checkpoint(arch: str = CLIP_ARCH, seed: int = 0) -> tuple[str, Path]:
    """(mmrag model id, checkpoint path) of `arch` with seeded random weights, saved once in the temp dir.

    Every process that loads the file gets the same model, so an index built in one run is searchable in
    the next; the file name carries the open_clip version, whose init may change between releases.
    """
    import open_clip

    tag = hashlib.sha1(f"{arch}:{seed}:{open_clip.__version__}".encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"mmrag-bench-{arch}-random-{tag}.pt"
    if not path.exists():
        import torch

        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": model.state_dict()}, partial)
        os.replace(partial, path)
    return f"open_clip:{arch}/{path}", path
