from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.settings import Settings, load_settings

ASSETS = Path(__file__).parent / "assets"
TINY_CLIP_CONFIG = ASSETS / "mmrag-test-tiny.json"
TINY_CLIP_WIDE_CONFIG = ASSETS / "mmrag-test-tiny-wide.json"


def tiny_clip_id(config: Path = TINY_CLIP_CONFIG) -> str:
    """A tiny real open_clip architecture (ViT + text transformer) with seeded random weights saved once as a
    checkpoint file: every process that loads it (the CLI under test, the test itself) gets the same model,
    through the same loading code users use."""
    import hashlib

    arch = config.stem
    digest = hashlib.sha1(config.read_bytes()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"{arch}-{digest}.pt"
    if not path.exists():
        import open_clip
        import torch

        open_clip.add_model_config(config)
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": model.state_dict()}, tmp)
        os.replace(tmp, path)
    return f"open_clip:{arch}/{path}"


TINY_CLIP = tiny_clip_id()

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The vector store the end-to-end tests run on: MMRAG_TEST_BACKEND=milvus runs them on Milvus Lite (a path in
# each test's data dir), in this process and in every `mmrag` process they start (scripts/test.sh does a
# second, targeted pass). The conformance suite (test_vector_store.py) runs on every backend regardless.
TEST_BACKEND = os.environ.get("MMRAG_TEST_BACKEND", "faiss")
if TEST_BACKEND != "faiss":
    os.environ["MMRAG_INDEX__BACKEND"] = TEST_BACKEND


def tiny_clip_env(data_dir: Path) -> dict[str, str]:
    """Environment that points a `mmrag` process at the tiny CLIP and a private data dir."""
    return {
        "MMRAG_DATA_DIR": str(data_dir),
        "MMRAG_MODELS__CLIP": TINY_CLIP,
        "MMRAG_MODELS__MODEL_CONFIG_PATHS": json.dumps([str(ASSETS)]),
        "MMRAG_MODELS__BATCH_SIZE": "8",
        "MMRAG_SPACES__TEXT": "false",  # CLIP alone; the text space has tests of its own
    }


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def tiny_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = tiny_clip_env(data_dir)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def tiny_settings(tiny_env: dict[str, str]) -> Settings:
    return load_settings()


# ---- PostgreSQL: with MMRAG_TEST_POSTGRES_URL (a server URL, see scripts/postgres.sh) every test, and every
# module's module-scoped fixtures, run against a fresh database of their own, dropped afterwards.
# MMRAG_DATABASE_URL reaches in-process settings and `mmrag` subprocesses alike.
POSTGRES_SERVER_URL = os.environ.get("MMRAG_TEST_POSTGRES_URL") or None


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[object | None]:
    if POSTGRES_SERVER_URL is None:
        yield None
        return
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


def _fresh_postgres_database(admin: object) -> Iterator[str]:
    from sqlalchemy import Engine, text
    from sqlalchemy.engine import make_url

    assert isinstance(admin, Engine)
    name = f"mmrag_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        with pytest.MonkeyPatch.context() as mp:
            url = make_url(POSTGRES_SERVER_URL).set(database=name).render_as_string(hide_password=False)
            mp.setenv("MMRAG_DATABASE_URL", url)
            yield url
    finally:
        with admin.connect() as conn:  # FORCE: a test that failed may have left a connection open
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module", autouse=True)
def _postgres_module_database(_postgres_admin: object | None) -> Iterator[str | None]:
    if _postgres_admin is None:
        yield None
        return
    yield from _fresh_postgres_database(_postgres_admin)


@pytest.fixture(autouse=True)
def postgres_database(
    _postgres_admin: object | None, _postgres_module_database: str | None
) -> Iterator[str | None]:
    """The URL of this test's own PostgreSQL database, or None when the suite runs on SQLite."""
    if _postgres_admin is None:
        yield None
        return
    yield from _fresh_postgres_database(_postgres_admin)
