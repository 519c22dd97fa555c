"""kill -9 at random points of `mmrag index`, in the style of Qdrant's crasher: after each kill the
collection must be whole (the database and every index agree, no document half committed), and the run
that finally finishes must give exactly what one clean run gives. With MMRAG_TEST_BACKEND=milvus
(scripts/test.sh's Milvus pass) the vectors live in Milvus Lite, killed along with `mmrag index`.

MMRAG_CRASH_ITERATIONS (default 3) sets the number of kills; MMRAG_CRASH_SEED the random seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from tests.conftest import tiny_clip_env
from tests.realdata import PHOTO_DESCRIPTIONS, write_markdown, write_pdf_with_photos, write_photos

pytestmark = pytest.mark.slow

ITERATIONS = int(os.environ.get("MMRAG_CRASH_ITERATIONS", "3"))
SEED = int(os.environ.get("MMRAG_CRASH_SEED", "0"))


def _db_url(data: Path) -> str:
    return os.environ.get("MMRAG_DATABASE_URL") or f"sqlite:///{data / 'mmrag.db'}"


def _sql(data: Path, query: str, url: str | None = None) -> list[tuple]:
    engine = create_engine(url or _db_url(data))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def _env(data: Path, database: str | None = None) -> dict[str, str]:
    env = {**os.environ, **tiny_clip_env(data), "MMRAG_INGEST__SAVE_EVERY_FILES": "5"}
    if database is not None:
        env["MMRAG_DATABASE_URL"] = database
    return env


def _corpus(root: Path) -> None:
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    write_photos(root / "photos")
    write_pdf_with_photos(
        root / "docs" / "report.pdf",
        [["chelsea"], ["rocket", "coffee"], ["chelsea"]],
        text=[PHOTO_DESCRIPTIONS["chelsea"][:300], PHOTO_DESCRIPTIONS["rocket"][:300], "The cat again."],
    )
    write_markdown(root / "notes" / "photos.md")
    faces = root / "faces"
    faces.mkdir(parents=True)
    for i, face in enumerate(lfw_subset()[:120]):
        Image.fromarray((face * 255).astype(np.uint8)).resize((48, 48)).save(faces / f"lfw_{i:03d}.png")
    digits = root / "digits"
    digits.mkdir()
    for i, digit in enumerate(load_digits().images[:120]):
        Image.fromarray((digit * 16).astype(np.uint8)).resize((32, 32)).save(digits / f"digit_{i:03d}.png")


def _mutate(root: Path, rng: random.Random, iteration: int) -> None:
    """What happens to a library between runs: a file edited, one deleted, one added."""
    notes = root / "notes" / f"log-{rng.randrange(3)}.txt"
    notes.write_text(f"entry {iteration}: " + PHOTO_DESCRIPTIONS[rng.choice(["coins", "moon", "clock"])])
    faces = sorted((root / "faces").iterdir())
    if faces:
        rng.choice(faces).unlink()
    digit = (root / "digits" / f"digit_{rng.randrange(120):03d}.png").read_bytes()
    (root / "digits" / f"copy_{iteration}.png").write_bytes(digit)


def _index(data: Path, root: Path, database: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmrag", "index", "--prune", str(root)],
        env=_env(data, database),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _committed(data: Path) -> int:
    """Documents written so far (SQLite or PostgreSQL), or -1 before the schema exists."""
    if not os.environ.get("MMRAG_DATABASE_URL") and not (data / "mmrag.db").exists():
        return -1
    try:
        return int(_sql(data, "select count(*) from documents")[0][0])
    except Exception:  # no schema yet, or the writer holds SQLite's lock for a moment
        return -1


def _kill_after_a_commit(data: Path, root: Path, rng: random.Random) -> bool:
    """Start `mmrag index`, let it commit at least one file, wait a random while, kill -9. False when the
    run finished before it could be killed."""
    before = _committed(data)
    process = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "index", "--prune", str(root)],
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while _committed(data) <= max(before, 0) and process.poll() is None:
            assert time.monotonic() < deadline, "indexing made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.0))
        if process.poll() is not None:
            return False
        process.send_signal(signal.SIGKILL)
        process.wait(60)
        return True
    finally:
        if process.poll() is None:
            process.kill()


def _assert_whole(data: Path) -> dict:
    stats = subprocess.run(
        [sys.executable, "-m", "mmrag", "stats", "--json"],
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stats.returncode == 0, stats.stderr
    info = json.loads(stats.stdout)
    for key, index in info["indexes"].items():  # opening repaired what lagged: index == database
        assert index["count"] == info["items"].get(key.partition(".")[2], 0), (key, info)
    assert info["pending"] == 0, info  # a durable store (Milvus) acknowledged every write left behind
    empty = _sql(
        data,
        "select d.path from documents d where d.status = 'indexed' "
        "and not exists (select 1 from items i where i.document_id = d.id)",
    )
    assert not empty, f"documents committed without their items: {empty}"
    unembedded = _sql(
        data,
        "select i.id from items i where not exists (select 1 from item_vectors v where v.item_id = i.id)",
    )
    assert not unembedded, f"items without a vector: {unembedded[:5]}"
    return info


def _contents(data: Path, url: str | None = None) -> dict[str, list[tuple]]:
    """Each document's items as (modality, page, content hash), in a stable order."""
    rows = _sql(
        data,
        "select d.path, i.modality, i.page, i.content_hash from documents d "
        "join items i on i.document_id = d.id where d.status = 'indexed'",
        url,
    )
    contents: dict[str, list[tuple]] = {}
    for path, modality, page, content_hash in rows:
        contents.setdefault(path, []).append((modality, page or 0, content_hash))
    return {path: sorted(items) for path, items in contents.items()}


def test_kill_9_at_random_points_never_breaks_the_collection(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    root = tmp_path / "library"
    _corpus(root)
    data = tmp_path / "data"
    kills = 0
    for iteration in range(ITERATIONS):
        _mutate(root, rng, iteration)
        kills += _kill_after_a_commit(data, root, rng)
        _assert_whole(data)
    assert kills >= min(ITERATIONS, 1), "no run could be killed: the corpus is indexed too fast"

    finished = _index(data, root)
    assert finished.returncode == 0, finished.stderr
    _assert_whole(data)

    # One clean run over the final library, on SQLite whatever the killed runs used.
    clean_url = f"sqlite:///{tmp_path / 'clean' / 'mmrag.db'}"
    clean = _index(tmp_path / "clean", root, clean_url)
    assert clean.returncode == 0, clean.stderr
    assert _contents(data) == _contents(tmp_path / "clean", clean_url)
