"""The quick way of `mmrag stats` and of an `mmrag index` that finds nothing changed (mmrag.quick): the same
answers as the full way (mmrag.runtime), and the full way whenever the quick answer would not be whole."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrag import cli
from mmrag.cli import app
from mmrag.quick import QuickCollection, quick_collection
from mmrag.store.quick import QuickReads
from tests.conftest import POSTGRES_SERVER_URL, TEST_BACKEND, tiny_clip_env
from tests.realdata import write_markdown, write_photos

pytestmark = pytest.mark.skipif(
    bool(POSTGRES_SERVER_URL) or TEST_BACKEND != "faiss",
    reason="the quick way reads the embedded SQLite database and FAISS's manifests only",
)

SUMMARY = "indexed 0 files (0 items), 4 unchanged, 0 failed, 1 not supported"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(library, data dir) of a collection indexed once: three photos, a Markdown file, an unsupported
    file. Tests change copies of the data dir, never these."""
    root = tmp_path_factory.mktemp("quick")
    library = root / "library"
    write_photos(library / "photos", ["chelsea", "astronaut", "coffee"])
    write_markdown(library / "notes" / "notes.md")
    (library / "notes" / "archive.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    result = CliRunner().invoke(app, ["index", str(library)], env=tiny_clip_env(root / "data"))
    assert result.exit_code == 0, result.output
    return library, root / "data"


@pytest.fixture
def data(built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the built data dir, which the settings of this test point at."""
    copy = tmp_path / "data"
    shutil.copytree(built[1], copy)
    for key, value in tiny_clip_env(copy).items():
        monkeypatch.setenv(key, value)
    return copy


@pytest.fixture
def full_way(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commands go the full way: the quick reads never open."""
    monkeypatch.setattr(QuickReads, "open", classmethod(lambda cls, path: None))
    yield


def _no_full_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the full way was taken")

    monkeypatch.setattr(cli, "_runtime", refuse)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_stats_the_quick_way_says_what_the_full_way_says(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patched:
        _no_full_way(patched)
        quick_json, quick_text = invoke("stats", "--json"), invoke("stats")
    monkeypatch.setattr(QuickReads, "open", classmethod(lambda cls, path: None))
    full_json, full_text = invoke("stats", "--json"), invoke("stats")
    assert quick_json[0] == 0 and quick_text[0] == 0, quick_json
    info = json.loads(quick_json[1])
    assert info["documents"] == 4 and info["items"]["image"] == 3 and info["items"]["text"] > 1
    assert info["setup"]["models.clip"] and info["indexes"]["clip.image"]["count"] == 3
    assert json.loads(full_json[1]) == info
    assert quick_text == full_text


def test_an_index_run_that_finds_nothing_changed_goes_the_quick_way(
    built: tuple[Path, Path], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = built[0]
    with monkeypatch.context() as patched:
        _no_full_way(patched)
        code, _, quick_err = invoke("index", str(library))
    monkeypatch.setattr(QuickReads, "open", classmethod(lambda cls, path: None))
    full_code, _, full_err = invoke("index", str(library))
    assert code == full_code == 0, quick_err
    summary = [line for line in quick_err.splitlines() if line.startswith(("indexed", "  not supported"))]
    assert summary[0] == SUMMARY and len(summary) == 2
    assert summary[1].startswith(f"  not supported {library / 'notes' / 'archive.zip'}: ")
    assert summary == [
        line for line in full_err.splitlines() if line.startswith(("indexed", "  not supported"))
    ]


def test_new_files_go_the_full_way(built: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    library = tmp_path / "library"
    shutil.copytree(built[0] / "photos", library / "photos")  # the same photos at other paths: new files
    code, _, err = invoke("index", str(library))
    assert code == 0 and "indexed 3 files (3 items), 0 unchanged" in err, err
    code, out, _ = invoke("stats", "--json")
    assert json.loads(out)["documents"] == 7


def _lag_state(data: Path) -> None:
    state = data / "indexes" / "default" / "state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "generation": saved["generation"] - 1}))


def _lose_an_index(data: Path) -> None:
    shutil.rmtree(data / "indexes" / "default" / "clip.image")


def _miscount(data: Path) -> None:
    manifest = data / "indexes" / "default" / "clip.image" / "manifest.json"
    saved = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**saved, "count": saved["count"] - 1}))


@pytest.mark.parametrize(
    "damage",
    [_lag_state, _lose_an_index, _miscount],
    ids=["saved before the last write", "an index lost", "a manifest that does not match its index"],
)
def test_indexes_that_need_repair_go_the_full_way(damage, data: Path) -> None:  # type: ignore[no-untyped-def]
    expected = json.loads(invoke("stats", "--json")[1])
    damage(data)
    with quick_collection(None, {}) as quick:
        assert quick is None
    code, out, err = invoke("stats", "--json")  # the full way repairs, then counts
    assert code == 0, err
    assert json.loads(out) == expected
    with quick_collection(None, {}) as quick:  # repaired and saved by that reader: the quick way again
        assert isinstance(quick, QuickCollection)


def _relayout_due(data: Path) -> None:
    manifest = data / "indexes" / "default" / "clip.image" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "index_type": "ivf"}))


@pytest.mark.parametrize(
    ("env", "damage"),
    [
        ({"MMRAG_INDEX__BACKEND": "milvus"}, None),
        ({"MMRAG_DATABASE_URL": "sqlite:///{data}/mmrag.db"}, None),
        ({}, _relayout_due),
        ({"MMRAG_COLLECTION": "other"}, None),
    ],
    ids=["another vector store", "a database URL", "an index to rebuild", "a collection not there"],
)
def test_what_the_quick_way_does_not_answer(  # type: ignore[no-untyped-def]
    env: dict[str, str], damage, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with quick_collection(None, {}) as quick:
        assert isinstance(quick, QuickCollection)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(data=data))
    if damage is not None:
        damage(data)
    with quick_collection(None, {}) as quick:
        assert quick is None


def test_a_conflicting_model_is_refused_as_on_the_full_way(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMRAG_MODELS__CLIP", "open_clip:ViT-B-32/laion2b_s34b_b79k")
    code, _, err = invoke("stats")
    assert code == 2 and "was built with other settings" in err and "models.clip" in err, err


def test_a_collection_being_written_is_reported_as_on_the_full_way(
    built: tuple[Path, Path], data: Path
) -> None:
    fd = os.open(data / "indexes" / "default" / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = invoke("index", str(built[0]))
    finally:
        os.close(fd)
    assert code == 2 and "being written by another process" in err, err


def test_the_command_runs_its_work_with_the_garbage_collector_on(
    built: tuple[Path, Path], data: Path
) -> None:
    """`mmrag` starts with the collector paused (mmrag.__main__) and resumes it before a command's work."""
    probe = (
        "import atexit, gc, sys\n"
        "from mmrag.__main__ import main\n"
        "sys.argv = ['mmrag', *sys.argv[1:]]\n"
        "atexit.register(lambda: print('collector on:', gc.isenabled(), file=sys.stderr))\n"
        "main()\n"
    )
    for args, on in ((["index", str(built[0])], True), (["--help"], False)):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert f"collector on: {on}" in done.stderr, done.stderr
