"""FAISS on the GPU, when there is one: a single safe probe and a cloner for search copies.

The CPU index stays the master copy (add, remove and save work on it); a GPU clone is only a search cache.
Cloning relies on faiss's own GPU cloner: `index_cpu_to_gpu` turns IndexFlat into GpuIndexFlat and
IndexIVFFlat into GpuIndexIVFFlat (user ids, nprobe and the coarse quantizer are copied), and for an
IndexIDMap/IndexIDMap2 it clones the wrapper on the CPU and only the inner flat index onto the GPU, so the
id translation keeps working on the clone (faiss/gpu/GpuCloner.cpp, ToGpuCloner::clone_Index).
"""

from __future__ import annotations

import logging
import threading
from importlib import metadata
from typing import TYPE_CHECKING, Any

from mmrag.settings import IndexSettings

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

# GPU k-selection is capped (1024 in older faiss, 2048 in newer); larger k must search on the CPU.
GPU_MAX_K = 1024

_probe_lock = threading.Lock()
_probe_result: bool | None = None  # None until probed
_resources_lock = threading.Lock()
_resources: Any = None


def gpu_available() -> bool:
    """Whether FAISS can run a search on a GPU here. Probed once per process; never raises."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            reason = _probe_failure()
            if reason is None:
                import faiss

                log.info("FAISS GPU available (%d device(s)); searching on GPU 0", faiss.get_num_gpus())
            else:
                log.info("FAISS GPU unavailable (%s); using CPU", reason)
            _probe_result = reason is None
        return _probe_result


def use_gpu(settings: IndexSettings) -> bool:
    """The device decision for one index: the setting first, so "never" does not even probe."""
    return settings.use_gpu != "never" and gpu_available()


def _cpu_only_build() -> bool:
    """faiss-cpu is the only FAISS installed (pip): no GPU to probe, and no need to import FAISS to know it
    (`mmrag stats` reports devices without loading an index)."""

    def installed(name: str) -> bool:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return False
        return True

    gpu_wheels = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")
    return installed("faiss-cpu") and not any(installed(name) for name in gpu_wheels)


def _probe_failure() -> str | None:
    """None when a tiny index can be cloned to GPU 0 and searched there; otherwise why not."""
    if _cpu_only_build():
        return "faiss-cpu installed (no GPU build)"
    import faiss
    import numpy as np

    if not hasattr(faiss, "StandardGpuResources"):
        return "faiss built without GPU support"
    try:
        if faiss.get_num_gpus() < 1:
            return "no GPU visible to faiss"
        probe = faiss.IndexFlatIP(4)
        probe.add(np.eye(4, dtype=np.float32))
        _, ids = to_gpu(probe).search(np.eye(1, 4, dtype=np.float32), 1)
        if int(ids[0, 0]) != 0:
            return f"probe search returned id {int(ids[0, 0])} instead of 0"
    except Exception as exc:  # any driver/CUDA/faiss failure means "use the CPU", never a crash
        return f"{type(exc).__name__}: {exc}"
    return None


def _shared_resources() -> Any:
    # One StandardGpuResources per process: each one reserves scratch memory on the device.
    global _resources
    import faiss

    with _resources_lock:
        if _resources is None:
            _resources = faiss.StandardGpuResources()
        return _resources


def to_gpu(cpu_index: faiss.Index) -> faiss.Index:
    """A GPU copy of `cpu_index` on device 0, for searching only; the CPU index is not changed."""
    import faiss

    return faiss.index_cpu_to_gpu(_shared_resources(), 0, cpu_index)
