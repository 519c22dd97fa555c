"""End to end through the real `mmrag` command, in its own process, with a tiny random-weight CLIP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from mmrag.ingest.mupdf import pymupdf
from tests.conftest import POSTGRES_SERVER_URL, TEST_BACKEND, tiny_clip_env
from tests.realdata import write_markdown, write_pdf_with_photos, write_photos

pytestmark = pytest.mark.slow


def mmrag(
    data_dir: Path, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **tiny_clip_env(data_dir), **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mmrag", *args], env=env, capture_output=True, text=True, timeout=600
    )


def _imports(importtime_log: str) -> list[str]:
    """Module names from a PYTHONPROFILEIMPORTTIME log, indented as Python nests them (children first)."""
    return [
        line.rpartition("|")[2] for line in importtime_log.splitlines() if line.startswith("import time:")
    ]


def _importers(importtime_log: str, module: str) -> list[str]:
    """`module` and the chain of modules whose import brought it in."""
    lines = _imports(importtime_log)
    chain = [module]
    for line in lines[lines.index(module) + 1 :]:
        if len(line) - len(line.lstrip()) < len(chain[-1]) - len(chain[-1].lstrip()):
            chain.append(line)
    return [name.strip() for name in chain]


def stats(data_dir: Path) -> dict:
    res = mmrag(data_dir, "stats", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def assert_consistent(data_dir: Path) -> dict:
    info = stats(data_dir)
    assert sum(ix["count"] for ix in info["indexes"].values()) == sum(info["items"].values())
    for key, ix in info["indexes"].items():  # one index per modality, each as big as its items
        assert ix["count"] == info["items"].get(key.partition(".")[2], 0), key
    return info


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    write_photos(root / "photos", ["chelsea", "astronaut", "coffee", "rocket"])
    write_pdf_with_photos(
        root / "docs" / "report.pdf",
        [["chelsea"], ["rocket"], ["chelsea"]],
        text=["A cat sleeps on the sofa.", "The rocket stands on the launch pad.", "The cat again."],
    )
    write_markdown(root / "notes" / "notes.md")
    # bad input that must be reported, not crash the run
    good = (root / "photos" / "coffee.jpg").read_bytes()
    (root / "photos" / "broken.jpg").write_bytes(good[: len(good) // 3])
    encrypted = pymupdf.open()
    encrypted.new_page().insert_text((72, 72), "secret")
    encrypted.save(
        root / "docs" / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="pw"
    )
    (root / "notes" / "archive.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    return root


def test_index_query_reindex_prune_delete(library: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = mmrag(data, "index", str(library))
    assert res.returncode == 1, res.stderr  # two bad files
    assert "broken.jpg" in res.stderr and "locked.pdf" in res.stderr
    assert "encrypted" in res.stderr.lower()
    assert "indexed 6 files" in res.stderr  # 4 photos + report.pdf + notes.md
    info = assert_consistent(data)
    assert info["documents"] == 6
    assert {f["path"].rsplit("/", 1)[-1] for f in info["failed"]} == {"broken.jpg", "locked.pdf"}
    assert info["items"]["image"] == 4 + 2  # the PDF's cat is used twice but stored once
    assert info["items"]["text"] >= 3

    # an image query finds the identical photo: the file and the picture inside the PDF, one hit naming the
    # other copy ("also in"); with the copies unfolded, both, the PDF's with its page and box
    query = ["query", "--image", str(library / "photos" / "chelsea.jpg"), "-k", "3", "--json"]
    res = mmrag(data, *query)
    assert res.returncode == 0, res.stderr
    top = json.loads(res.stdout)[0]
    copies = {(Path(h["path"]).name, h["page"]) for h in [top, *top["also_in"]]}
    assert copies == {("chelsea.jpg", None), ("report.pdf", 1)} and top["scores"]["clip:image>image"] > 0.99
    res = mmrag(data, *query, extra_env={"MMRAG_RETRIEVE__FOLD_DUPLICATES": "false"})
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    top_two = {(Path(h["path"]).name, h["page"]) for h in hits[:2]}
    assert top_two == {("chelsea.jpg", None), ("report.pdf", 1)}
    assert all(h["scores"]["clip:image>image"] > 0.99 for h in hits[:2])
    pdf_hit = next(h for h in hits if h["page"] == 1)
    x0, y0, x1, y1 = pdf_hit["bbox"]
    assert 0 <= x0 < x1 <= 595 and 0 <= y0 < y1 <= 842

    # a text query returns mixed modalities, as JSON or as a table
    res = mmrag(data, "query", "a rocket on the launch pad", "-k", "20", "--json")
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert {h["modality"] for h in hits} == {"image", "text"}
    found = {Path(c["path"]).name for h in hits for c in [h, *h["also_in"]]}  # a folded copy is named
    assert found >= {"report.pdf", "notes.md", "rocket.jpg"}
    # piped (not a terminal): a header and one tab-separated line per hit, paths whole, the matched text
    res = mmrag(data, "query", "a rocket on the launch pad", "-k", "5", extra_env={"COLUMNS": "40"})
    assert res.returncode == 0, res.stderr
    header, *rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert header == ["rank", "score", "modality", "source", "page", "match"] and len(rows) == 5
    assert all(len(row) == 6 and row[3].startswith(str(library)) for row in rows)
    assert any(row[2] == "text" and row[5] for row in rows)  # a text hit shows its text

    # unchanged files are skipped
    res = mmrag(data, "index", str(library))
    assert "indexed 0 files" in res.stderr and "6 unchanged" in res.stderr
    # and neither that (where no failed file is retried) nor stats loads a model, an index or numpy
    unchanged = mmrag(data, "index", str(library / "notes"), extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert "indexed 0 files" in unchanged.stderr and "1 unchanged" in unchanged.stderr
    counted = mmrag(data, "stats", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert counted.returncode == 0, counted.stderr
    if TEST_BACKEND == "faiss":  # pymilvus brings numpy with it
        # nor, on SQLite, SQLAlchemy: a look at the database through sqlite3 answers them (mmrag.quick)
        unwanted = {"torch", "faiss", "numpy"} | (set() if POSTGRES_SERVER_URL else {"sqlalchemy"})
        for run in (unchanged, counted):
            heavy = [line for line in _imports(run.stderr) if line.strip() in unwanted]
            assert not heavy, " <- ".join(_importers(run.stderr, heavy[0]))
    # a mistyped collection is an error naming the ones there are, and creates nothing
    for command in (["stats"], ["query", "a cat"]):
        res = mmrag(data, "--collection", "defualt", *command)
        assert res.returncode == 2 and "collections here: " in res.stderr and "default" in res.stderr, (
            res.stderr
        )
    assert "defualt" not in {name for (name,) in _query(data, "select name from collections")}
    ids_before = set(_item_ids(data))

    # edit one file, delete another, prune
    notes = library / "notes" / "notes.md"
    notes.write_text(notes.read_text() + "\n\n## Appendix\n\nA brand new closing section about telescopes.\n")
    (library / "photos" / "rocket.jpg").unlink()
    (library / "photos" / "broken.jpg").unlink()
    res = mmrag(data, "index", "--prune", str(library))
    assert "indexed 1 files" in res.stderr and "2 pruned" in res.stderr, res.stderr
    info = assert_consistent(data)
    assert info["items"]["image"] == 5
    paths = {Path(p).name for p in _document_paths(data)}
    assert "rocket.jpg" not in paths and "broken.jpg" not in paths
    texts = _texts_of(data, "notes.md")
    assert any("telescopes" in t for t in texts)
    assert set(_item_ids(data)) & ids_before  # the untouched files kept their items

    # delete a document through the CLI
    res = mmrag(data, "delete", str(library / "docs" / "report.pdf"))
    assert res.returncode == 0, res.stderr
    info = assert_consistent(data)
    assert "report.pdf" not in {Path(p).name for p in _document_paths(data)}
    res = mmrag(data, "delete", str(library / "docs" / "report.pdf"))
    assert res.returncode == 1 and "no indexed document" in res.stderr


def test_empty_folder_and_missing_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "empty").mkdir()
    res = mmrag(data, "index", str(tmp_path / "empty"))
    assert res.returncode == 0 and "indexed 0 files" in res.stderr
    res = mmrag(data, "index", str(tmp_path / "nope"))
    assert res.returncode == 2 and "nope" in res.stderr and "Traceback" not in res.stderr
    assert "indexing" not in res.stderr  # said before a progress bar starts


def test_unknown_model_is_a_clear_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", ["coins"])
    data = tmp_path / "data"
    res = mmrag(
        data, "index", str(tmp_path / "photos"), extra_env={"MMRAG_MODELS__CLIP": "open_clip:NoSuchNet/x"}
    )
    assert res.returncode == 2
    assert "unknown open_clip architecture 'NoSuchNet'" in res.stderr and "Traceback" not in res.stderr
    assert not data.exists()  # checked before anything was written
    res = mmrag(data, "stats")  # nothing indexed: said in one line, and still nothing written
    assert res.returncode == 2 and "nothing is indexed" in res.stderr and not data.exists()


def _lfw_and_digits(folder: Path, n_digits: int) -> int:
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    for i, face in enumerate(lfw_subset()):
        Image.fromarray((face * 255).astype(np.uint8)).save(folder / f"lfw_{i:03d}.png")
    digits = load_digits().images[:n_digits]
    for i, digit in enumerate(digits):
        Image.fromarray((digit * 16).astype(np.uint8)).resize((32, 32)).save(folder / f"digit_{i:04d}.png")
    return 200 + n_digits


def test_terminated_run_leaves_a_consistent_collection_and_rerun_finishes(tmp_path: Path) -> None:
    """SIGTERM ends a run like Ctrl-C: exit 130, what was committed is kept (kill -9: tests/test_crash.py)."""
    sig = signal.SIGTERM
    data = tmp_path / "data"
    total = _lfw_and_digits(tmp_path / "faces", 800)
    env = {**os.environ, **tiny_clip_env(data), "MMRAG_INGEST__SAVE_EVERY_FILES": "7"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "index", str(tmp_path / "faces")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    committed = _wait_for_documents(data, at_least=40, proc=proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert committed is not None, f"the run ended before it could be interrupted: {stderr}"
    assert committed < total
    assert proc.returncode == 130 and "interrupted" in stderr, stderr
    info = assert_consistent(data)  # opening repairs an index that lagged the database
    assert 0 < info["documents"] < total

    res = mmrag(data, "index", str(tmp_path / "faces"))
    assert res.returncode == 0, res.stderr
    info = assert_consistent(data)
    assert info["documents"] == total and info["items"] == {"image": total}
    paths = _document_paths(data)
    assert len(paths) == len(set(paths)) == total


def _db_url(data_dir: Path) -> str:
    """The database the `mmrag` processes of this test use: PostgreSQL when the suite runs on it."""
    return os.environ.get("MMRAG_DATABASE_URL") or f"sqlite:///{data_dir / 'mmrag.db'}"


def _wait_for_documents(data_dir: Path, at_least: int, proc: subprocess.Popen[str]) -> int | None:
    url = _db_url(data_dir)
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            if not url.startswith("sqlite") or (data_dir / "mmrag.db").exists():
                try:
                    with engine.connect() as conn:
                        n = conn.execute(text("select count(*) from documents")).scalar_one()
                except DBAPIError:  # no schema yet, or the writer holds SQLite's lock
                    n = 0
                if n >= at_least:
                    return n
            time.sleep(0.01)
    finally:
        engine.dispose()
    raise AssertionError("indexing made no progress")


def _query(data_dir: Path, sql: str) -> list[tuple]:
    engine = create_engine(_db_url(data_dir))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _item_ids(data_dir: Path) -> list[int]:
    return [r[0] for r in _query(data_dir, "select id from items")]


def _document_paths(data_dir: Path) -> list[str]:
    return [r[0] for r in _query(data_dir, "select path from documents where status = 'indexed'")]


def _texts_of(data_dir: Path, name: str) -> list[str]:
    rows = _query(data_dir, "select i.text, d.path from items i join documents d on d.id = i.document_id")
    return [t for t, p in rows if p.endswith(name) and t]


def _mmrag_recorded(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mmrag` with no vector store in the environment: the collection's recorded backend is used."""
    env = {**os.environ, **tiny_clip_env(data_dir)}
    env.pop("MMRAG_INDEX__BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "mmrag", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_query_filters_and_moving_the_collection_to_another_store(library: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = mmrag(data, "index", str(library))
    assert "indexed 6 files" in res.stderr, res.stderr
    first = stats(data)["backend"]
    other = "faiss" if first == "milvus" else "milvus"

    def query(*where: str, k: int = 50) -> list[dict]:
        args = ["query", "a rocket on the launch pad", "-k", str(k), "--json"]
        res = _mmrag_recorded(data, *args, *[f"--where={w}" for w in where])
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)  # type: ignore[no-any-return]

    everything = query()
    photos = query(f"path={library / 'photos'}")
    assert photos and {Path(h["path"]).parent for h in photos} == {library / "photos"}
    assert len(photos) == 4  # every photo, though the text chunks outrank them in the unfiltered list
    pdf_text = query(f"path={library / 'docs' / 'report.pdf'}", "modality=text", k=2)
    assert len(pdf_text) == 2 and {(Path(h["path"]).name, h["modality"]) for h in pdf_text} == {
        ("report.pdf", "text")
    }
    either = query("modality=image", "modality=page")
    assert {h["modality"] for h in either} == {"image"}
    bad = _mmrag_recorded(data, "query", "x", "--where", "colour=red")
    assert bad.returncode == 2 and "unknown filter 'colour'" in bad.stderr and "Traceback" not in bad.stderr

    # move the vectors to the other store: nothing embedded again, same answers, later commands follow
    moved = _mmrag_recorded(data, "reindex", "--to", other)
    assert moved.returncode == 0, moved.stderr
    assert f"now uses index.backend={other}" in moved.stderr
    info = json.loads(_mmrag_recorded(data, "stats", "--json").stdout)
    assert info["backend"] == other and info["setup"]["index.backend"] == other
    for key, index in info["indexes"].items():
        assert index["count"] == info["items"][key.partition(".")[2]] and index["backend"] == other
    after = query()  # every item (k=50 is more than the library holds), with the same raw scores
    raw = {h["item_id"]: h["scores"] for h in everything}
    assert {h["item_id"] for h in after} == set(raw)
    for hit in after:  # float16 storage: a store filled from the database scores within 1e-3
        for name, score in hit["scores"].items():
            assert score == pytest.approx(raw[hit["item_id"]][name], abs=2e-3)
    assert len(query(f"path={library / 'photos'}")) == 4
    back = _mmrag_recorded(data, "reindex", "--to", first)
    assert back.returncode == 0, back.stderr
    assert json.loads(_mmrag_recorded(data, "stats", "--json").stdout)["backend"] == first
