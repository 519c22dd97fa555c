"""Can a CLIP model's weights be had here: on disk, in the Hugging Face cache, or from a reachable hub?

Asked before anything is loaded or written, so that a machine with no hub fails in one line (or falls back
to the offline profile) instead of a minute of download retries and a data dir left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmrag.registry import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, OPEN_CLIP_PREFIX

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}
# What open_clip downloads for a hub entry without a file name (it tries them in this order).
_OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str  # where the weights come from, or why they cannot be had


def hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HTTP request with a short timeout; False when HF_HUB_OFFLINE is set."""
    if hub_offline():
        return False
    import httpx

    try:
        httpx.head(f"{hub_endpoint()}/api/models", timeout=timeout_s, follow_redirects=True)
    except httpx.HTTPError:
        return False
    return True


def clip_weights(model_id: str, cache_dir: Path | None = None) -> Availability:
    """Whether the weights of a CLIP model id can be loaded here, without loading them. A reachable hub
    answers at once; the cache is looked at only without one (that needs open_clip's table of tags)."""
    raw = model_id.strip()
    if raw.startswith(LOCAL_DIR_PREFIX) or Path(raw).expanduser().is_dir():
        return Availability(True, "a local directory")
    if not raw.startswith((HF_HUB_PREFIX, OPEN_CLIP_PREFIX)) or raw.partition("//")[1]:
        return Availability(True, "a local checkpoint")
    if hub_reachable():
        return Availability(True, "the Hugging Face hub (downloaded once, then cached)")
    repo, files = _hub_files(raw)
    if repo is None:
        return Availability(True, "a model without hub weights")
    if _cached(repo, files, cache_dir):
        return Availability(True, f"the Hugging Face cache ({repo})")
    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{hub_endpoint()} cannot be reached"
    return Availability(False, f"its weights ({repo}) are not in the Hugging Face cache and {why}")


def _hub_files(model_id: str) -> tuple[str | None, tuple[str, ...]]:
    """(hub repository, candidate weight files) of a model id; (None, ()) when it needs no hub."""
    if model_id.startswith(HF_HUB_PREFIX):
        return model_id[len(HF_HUB_PREFIX) :].strip("/"), _OPEN_CLIP_WEIGHT_FILES
    if not model_id.startswith(OPEN_CLIP_PREFIX):
        return None, ()
    arch, _, tag = model_id[len(OPEN_CLIP_PREFIX) :].partition("/")
    if not tag or tag.startswith(("/", "~", ".")):
        return None, ()
    import open_clip

    entry = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
    if not entry:
        return None, ()
    if entry.endswith("/"):  # "org/repo/": open_clip's default file names
        return entry.strip("/"), _OPEN_CLIP_WEIGHT_FILES
    repo, filename = os.path.split(entry)
    return repo, (filename,)


def _cached(repo: str, files: tuple[str, ...], cache_dir: Path | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on it
        return False
    for filename in files:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False
