from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmrag.errors import ConfigError
from mmrag.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_spells_out_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("MMRAG_"):
            monkeypatch.delenv(key)
    from_file = load_settings(REPO / "configs" / "default.yaml")
    assert from_file.model_dump() == Settings().model_dump()


def test_environment_beats_yaml_and_nests_with_double_underscore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"collection": "fromfile", "models": {"batch_size": 4}, "index": {"nprobe": 3}})
    )
    monkeypatch.setenv("MMRAG_MODELS__BATCH_SIZE", "7")
    settings = load_settings(cfg)
    assert settings.collection == "fromfile"
    assert settings.models.batch_size == 7  # env wins
    assert settings.index.nprobe == 3  # file beats default
    assert load_settings(cfg, collection="cli").collection == "cli"  # explicit override wins


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collection: viaenv\n")
    monkeypatch.setenv("MMRAG_CONFIG", str(cfg))
    assert load_settings().collection == "viaenv"


def test_typo_in_yaml_is_an_error_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest:\n  chunk_wrds: 10\n")
    with pytest.raises(ConfigError, match="chunk_wrds"):
        load_settings(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_bad_values_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chunk_overlap_words"):
        load_settings(ingest={"chunk_words": 10, "chunk_overlap_words": 10})
    with pytest.raises(ConfigError, match="collection"):
        load_settings(collection="../escape")


def test_data_dir_defaults_to_a_per_user_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MMRAG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "xdg" / "mmrag"
    assert settings.db_url == f"sqlite:///{tmp_path / 'xdg' / 'mmrag' / 'mmrag.db'}"
