"""Model ids as data: parse "open_clip:ARCH/TAG", "hf-hub:org/repo" or a local directory, pick device and
precision, and build open_clip models lazily through one factory."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrag.errors import ConfigError

log = logging.getLogger(__name__)

OPEN_CLIP_PREFIX = "open_clip:"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"


@dataclass(frozen=True)
class ClipSpec:
    """A parsed CLIP model id; `open_clip_name` and `pretrained` are what open_clip's factory takes."""

    model_id: str  # canonical form, recorded in index manifests
    open_clip_name: str  # "ViT-B-32", "hf-hub:org/repo" or "local-dir:/abs/path"
    pretrained: str | None  # a pretrained tag, a checkpoint path, or None (random init / bundled in hub/dir)


def canonical_clip_id(model_id: str) -> str:
    """The id as collections record it (paths made absolute), from its syntax alone: no model library is
    imported, so commands that load no model can still check a collection's model."""
    raw = model_id.strip()
    if raw.startswith(HF_HUB_PREFIX):
        return raw
    if raw.startswith(LOCAL_DIR_PREFIX) or Path(raw).expanduser().is_dir():
        return f"{LOCAL_DIR_PREFIX}{Path(raw.removeprefix(LOCAL_DIR_PREFIX)).expanduser().resolve()}"
    if raw.startswith(OPEN_CLIP_PREFIX):
        arch, _, pretrained = raw[len(OPEN_CLIP_PREFIX) :].partition("/")
        if pretrained.startswith(("/", "~", ".")):
            pretrained = str(Path(pretrained).expanduser().resolve())
        return f"{OPEN_CLIP_PREFIX}{arch}/{pretrained}"
    return raw


def parse_clip_id(model_id: str) -> ClipSpec:
    """Validate a CLIP model id against open_clip's architectures and tags (imports open_clip)."""
    raw = model_id.strip()
    if not raw:
        raise ConfigError("empty CLIP model id")
    if raw.startswith(HF_HUB_PREFIX):
        if not raw[len(HF_HUB_PREFIX) :].strip("/"):
            raise ConfigError(f"CLIP model id {model_id!r}: nothing after 'hf-hub:'")
        return ClipSpec(raw, raw, None)
    if raw.startswith(LOCAL_DIR_PREFIX) or Path(raw).expanduser().is_dir():
        path = Path(raw.removeprefix(LOCAL_DIR_PREFIX)).expanduser().resolve()
        if not (path / "open_clip_config.json").is_file():
            raise ConfigError(f"CLIP model directory {path} has no open_clip_config.json")
        return ClipSpec(f"{LOCAL_DIR_PREFIX}{path}", f"{LOCAL_DIR_PREFIX}{path}", None)
    if not raw.startswith(OPEN_CLIP_PREFIX):
        raise ConfigError(
            f"unknown CLIP model id {model_id!r}: use 'open_clip:ARCH/PRETRAINED' (e.g. "
            "'open_clip:ViT-B-32/laion2b_s34b_b79k'), 'hf-hub:org/repo' or a local directory"
        )
    arch, _, pretrained = raw[len(OPEN_CLIP_PREFIX) :].partition("/")
    if not arch:
        raise ConfigError(f"CLIP model id {model_id!r}: no architecture after 'open_clip:'")
    _check_arch(arch)
    if not pretrained:
        # Random weights differ in every process: an index built with them is noise. Refuse.
        raise ConfigError(
            f"CLIP model id {model_id!r} names no weights: add a pretrained tag "
            f"(open_clip:{arch}/TAG; known: {_known_tags(arch)}) or a checkpoint file "
            f"(open_clip:{arch}//path/to/weights.pt)"
        )
    if pretrained.startswith(("/", "~", ".")):
        path = Path(pretrained).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"CLIP weights file not found: {path}")
        pretrained = str(path)
    elif pretrained not in open_clip_tags(arch):
        raise ConfigError(
            f"unknown pretrained tag {pretrained!r} for {arch}; known tags: {_known_tags(arch)}"
        )
    return ClipSpec(canonical_clip_id(raw), arch, pretrained)


def _check_arch(arch: str) -> None:
    import open_clip

    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown open_clip architecture {arch!r}{hint}")


def open_clip_tags(arch: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def _known_tags(arch: str) -> str:
    return ", ".join(open_clip_tags(arch)) or "none published"


def register_model_configs(paths: list[Path]) -> None:
    """Make extra architecture JSON files (or folders of them) known to open_clip."""
    import open_clip

    for path in paths:
        path = Path(path).expanduser()
        if not path.exists():
            raise ConfigError(f"open_clip model config path not found: {path}")
        open_clip.add_model_config(path)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' requested but no CUDA device is usable; set models.device=auto or cpu"
        )
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if precision in ("fp16", "bf16") and device == "cpu":
        log.warning("precision %s on CPU is slow and inexact; consider fp32", precision)
    return precision


def create_clip(spec: ClipSpec, device: str, precision: str, cache_dir: Path | None) -> tuple[Any, Any, Any]:
    """Return (model, preprocess, tokenizer), model in eval mode on `device`."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.open_clip_name,
            pretrained=spec.pretrained,
            device=device,
            precision=precision,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
        tokenizer = open_clip.get_tokenizer(
            spec.open_clip_name, cache_dir=str(cache_dir) if cache_dir else None
        )
    except Exception as exc:  # hub errors, missing files, bad configs: all end up here
        raise ConfigError(f"could not load CLIP model {spec.model_id}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return model, preprocess, tokenizer
