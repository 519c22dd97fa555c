"""The database behaviours a deployment relies on, checked on whichever database the suite runs on.

`bash scripts/test.sh` runs the suite on SQLite, then the database-relevant files again on a real
PostgreSQL server (MMRAG_TEST_POSTGRES_URL, see scripts/postgres.sh); conftest gives every test its own
fresh database. Tests that only make sense on PostgreSQL skip on SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, inspect, text

from mmrag.collection import Collection, NewItem
from mmrag.embed.clip import ClipEmbedder
from mmrag.ingest.mupdf import pymupdf
from mmrag.ingest.pipeline import Indexer
from mmrag.runtime import open_runtime
from mmrag.settings import Settings
from mmrag.store.db import MIGRATION_LOCK_KEY, Database, DatabaseError
from mmrag.store.models import Document, Item
from tests.conftest import tiny_clip_env
from tests.realdata import write_photos

REPO = Path(__file__).resolve().parents[1]
on_postgres = pytest.mark.skipif(
    not os.environ.get("MMRAG_TEST_POSTGRES_URL"),
    reason="PostgreSQL only: needs MMRAG_TEST_POSTGRES_URL (scripts/postgres.sh)",
)


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mmrag.store.db import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


def _scalar(url: str, sql: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


@pytest.fixture
def db_url(tiny_settings: Settings) -> str:
    """This test's empty database: its own PostgreSQL database, or SQLite in the test's data dir."""
    return tiny_settings.db_url


@pytest.fixture
def collection(tiny_settings: Settings) -> Iterator[Collection]:
    db = Database(tiny_settings.db_url)
    coll = Collection(tiny_settings, db, [ClipEmbedder(tiny_settings.models)])
    coll.open()
    yield coll
    db.close()


def _add(coll: Collection, path: str, n_items: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_items, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        NewItem(modality="text", content_hash=f"{path}-{i}", text=f"chunk {i}", vectors={"clip": vectors[i]})
        for i in range(n_items)
    ]
    coll.replace_document(path=path, kind="text", content_hash=path, size=1, mtime=1.0, items=items)
    return vectors


# ---- migrations ------------------------------------------------------------------------------------------


@on_postgres
def test_each_test_gets_an_empty_postgres_database_of_its_own(db_url: str) -> None:
    assert db_url.startswith("postgresql+psycopg://")
    assert _scalar(db_url, "select current_database()") == db_url.rsplit("/", 1)[1]
    tables = "select count(*) from information_schema.tables where table_schema = 'public'"
    assert _scalar(db_url, tables) == 0


def test_migrations_build_the_schema_from_an_empty_database_and_downgrade_cleanly(db_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from mmrag.store.db import MIGRATIONS_DIR, head_revision, schema_is_current

    db = Database(db_url)
    assert _scalar(db_url, "select version_num from alembic_version") == _head_revision() == head_revision()
    assert schema_is_current(db.engine)  # what lets every later open skip Alembic
    inspector = inspect(db.engine)
    assert {"documents", "items", "item_vectors", "spaces", "captions"} <= set(inspector.get_table_names())
    columns = {c["name"]: c for c in inspector.get_columns("items")}
    if db.engine.dialect.name == "postgresql":
        # item ids are FAISS ids: 64-bit, from a sequence (never reused), vectors as bytea, meta as json
        assert str(columns["id"]["type"]) == "BIGINT" and "nextval" in str(columns["id"]["default"])
        vector = next(c for c in inspector.get_columns("item_vectors") if c["name"] == "vector")
        assert str(vector["type"]) == "BYTEA"
        assert str(columns["meta"]["type"]) == "JSON"
    else:
        assert "AUTOINCREMENT" in str(_scalar(db_url, "select sql from sqlite_master where name = 'items'"))

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    assert not schema_is_current(db.engine)
    db.close()
    Database(db_url).close()  # and up again
    assert _scalar(db_url, "select version_num from alembic_version") == _head_revision()


_MIGRATE = "import sys; from mmrag.store.db import Database; Database(sys.argv[1]).close()"
_MIGRATE_WHEN_TOLD = """
import sys, time
from pathlib import Path
from mmrag.store.db import Database
Path(sys.argv[3]).touch()  # imported: ready to race
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
Database(sys.argv[1]).close()
"""


def test_several_processes_migrating_at_once_all_succeed(db_url: str, tmp_path: Path) -> None:
    """Replicas of the service start together and each migrates on start: none may fail."""
    go, ready = tmp_path / "go", [tmp_path / f"ready{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_WHEN_TOLD, db_url, str(go), str(flag)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all four start migrating together
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in results]
    assert _scalar(db_url, "select count(*) from alembic_version") == 1
    assert _scalar(db_url, "select version_num from alembic_version") == _head_revision()


@on_postgres
def test_a_migration_waits_for_the_advisory_lock_another_process_holds(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.connect() as holder:
        holder.execute(text("select pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        holder.commit()
        proc = subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, db_url],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting = 0
        deadline = time.monotonic() + 60
        while waiting == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            waiting = holder.execute(
                text(
                    "select count(*) from pg_locks where locktype = 'advisory' and not granted "
                    "and classid = :hi and objid = :lo"
                ),
                {"hi": MIGRATION_LOCK_KEY >> 32, "lo": MIGRATION_LOCK_KEY & 0xFFFFFFFF},
            ).scalar_one()
            holder.commit()
        assert waiting == 1, "the migrating process did not wait for the lock"
        assert not inspect(holder).has_table("alembic_version")  # nothing migrated while the lock is held
        holder.execute(text("select pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        holder.commit()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert _scalar(db_url, "select version_num from alembic_version") == _head_revision()
    engine.dispose()


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(DatabaseError, match=r"cannot open the database .*127\.0\.0\.1:1/nowhere") as caught:
        Database("postgresql+psycopg://mmrag:s3cret-pw@127.0.0.1:1/nowhere")
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(DatabaseError, match="nosuchdriver"):
        Database("postgresql+nosuchdriver://mmrag:pw@127.0.0.1/x")


@pytest.mark.slow
def test_the_cli_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        **tiny_clip_env(tmp_path / "data"),
        "MMRAG_DATABASE_URL": "postgresql+psycopg://mmrag:s3cret-pw@127.0.0.1:1/mmrag",
    }
    res = subprocess.run(
        [sys.executable, "-m", "mmrag", "stats"], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2
    assert "cannot open the database" in res.stderr and "Traceback" not in res.stderr
    assert "s3cret-pw" not in res.stderr + res.stdout


# ---- ids -------------------------------------------------------------------------------------------------


def _push_item_ids_past(url: str, start: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("select setval(pg_get_serial_sequence('items', 'id'), :v)"), {"v": start})
        else:
            conn.execute(text("update sqlite_sequence set seq = :v where name = 'items'"), {"v": start})
    engine.dispose()


def test_item_ids_are_64_bit_and_never_reused_after_delete_and_reopen(
    collection: Collection, tiny_settings: Settings
) -> None:
    _add(collection, "/docs/seed.txt", 1, seed=0)  # creates SQLite's sqlite_sequence row
    _push_item_ids_past(tiny_settings.db_url, 2**33)
    vectors = _add(collection, "/docs/a.txt", 3, seed=1)
    _add(collection, "/docs/b.txt", 3, seed=2)
    ids = collection.store.ids("clip.text")
    assert ids.max() > 2**33 and len(ids) == 7
    _, found = collection.search("clip", "text", vectors[1], 1)  # a 64-bit id survives FAISS and the DB
    item, doc = collection.items_by_id(found[0])[int(found[0][0])]
    assert doc.path == "/docs/a.txt" and item.text == "chunk 1"

    used = set(ids.tolist())
    collection.delete_documents([d.id for d in collection.documents() if d.path == "/docs/b.txt"])
    collection.db.close()
    reopened = Database(tiny_settings.db_url)  # a new engine, as after a restart
    coll2 = Collection(tiny_settings, reopened, [ClipEmbedder(tiny_settings.models)])
    coll2.open()
    _add(coll2, "/docs/c.txt", 3, seed=3)
    new_ids = set(coll2.store.ids("clip.text").tolist()) - used
    assert len(new_ids) == 3 and min(new_ids) > max(used), "a deleted item's id was handed out again"
    reopened.close()


# ---- what SQLite stores, PostgreSQL must store too ---------------------------------------------------------


def test_long_paths_nul_characters_and_case_are_stored_like_on_sqlite(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    library = tmp_path / "library"
    deep = library
    for i in range(15):  # ~3100 bytes of path that does not compress: past a btree entry's ~2700 bytes
        deep = deep / f"{i:02d}-{os.urandom(100).hex()}"[:200]
    deep.mkdir(parents=True)
    (deep / "deep.md").write_text("# Deep\n\nA note stored under a very long folder path.\n")
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "Launch\x00 report of the rocket")  # text extraction keeps the NUL
    pdf.save(library / "nul.pdf")
    write_photos(library / "Photos", ["chelsea"])
    write_photos(library / "photos", ["chelsea"])  # differs only in case: two documents

    rt = open_runtime(tiny_settings)
    try:
        report = Indexer(rt.settings, rt.collection, rt.vectoriser()).run([library])
        assert report.ok and report.indexed == 4, report
        paths = {d.path for d in rt.collection.documents()}
        assert str(deep / "deep.md") in paths and len(str(deep / "deep.md").encode()) > 3000
        assert {str(library / "Photos" / "chelsea.jpg"), str(library / "photos" / "chelsea.jpg")} <= paths
        with rt.db.session() as session:
            texts = [t for t in session.scalars(text("select text from items")) if t]
        assert any("Launch" in t and "report of the rocket" in t for t in texts)
        again = Indexer(rt.settings, rt.collection, rt.vectoriser()).run([library])
        assert again.indexed == 0 and again.unchanged == 4  # each found again by its path
        long_doc = rt.collection.document_by_path(str(deep / "deep.md"))
        assert long_doc is not None
        rt.collection.delete_documents([long_doc.id])
        assert rt.collection.document_by_path(str(deep / "deep.md")) is None
    finally:
        rt.close()


def test_a_path_is_unique_within_its_collection_however_long(db_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    long_path = "/" + "/".join(os.urandom(100).hex() for _ in range(16))  # > 3200 bytes, incompressible
    db = Database(db_url)

    def add(collection: str) -> None:
        with db.session() as session:
            fields = {"kind": "text", "content_hash": "h", "size": 1, "mtime": 1.0}
            session.add(Document(collection=collection, path=long_path, **fields))

    add("default")
    add("other")  # the same path in another collection is another document
    with pytest.raises(IntegrityError, match=r"uq_documents_collection_path|UNIQUE constraint failed"):
        add("default")
    db.close()


# ---- concurrent ingest and queries -----------------------------------------------------------------------


def _faces_and_digits(folder: Path, n_digits: int) -> set[str]:
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    for i, face in enumerate(lfw_subset()):
        Image.fromarray((face * 255).astype(np.uint8)).save(folder / f"lfw_{i:03d}.png")
    for i, digit in enumerate(load_digits().images[:n_digits]):
        Image.fromarray((digit * 16).astype(np.uint8)).resize((32, 32)).save(folder / f"digit_{i:04d}.png")
    return {str(p) for p in folder.iterdir()}


@pytest.mark.slow
def test_ingest_in_one_process_and_queries_in_another_stay_consistent(
    tiny_settings: Settings, tiny_env: dict[str, str], tmp_path: Path
) -> None:
    """While `mmrag index` commits file after file, another process opens the collection again and again:
    every index entry it repairs from the database resolves to a stored item, every hit is a file being
    indexed, counts only grow, and a query through the CLI works meanwhile."""
    faces = tmp_path / "faces"
    sources = _faces_and_digits(faces, 100)
    env = {**os.environ, **tiny_env, "MMRAG_INGEST__SAVE_EVERY_FILES": "25"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "index", str(faces)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    query_image = Image.open(faces / "lfw_007.png").convert("RGB")
    snapshots: list[int] = []
    cli_query: subprocess.Popen[str] | None = None
    cli_query_path: Path | None = None
    deadline = time.monotonic() + 300
    while writer.poll() is None and time.monotonic() < deadline:
        rt = open_runtime(tiny_settings)
        try:
            ids = rt.collection.store.ids("clip.image")
            resolved = rt.collection.items_by_id(ids)
            assert set(resolved) == {int(i) for i in ids}, "an index entry points at no stored item"
            committed = {doc.path for _, doc in resolved.values()}
            assert committed <= sources
            hits = rt.retriever().search(image=query_image, k=5)
            assert {h.path for h in hits} <= sources
        finally:
            rt.close()
        if len(ids):
            snapshots.append(len(ids))
            faces_in = sorted(p for p in committed if Path(p).name.startswith("lfw_"))
            if cli_query is None and faces_in:  # a third process queries through the CLI meanwhile,
                # for a photo already committed (files commit in no fixed order)
                cli_query_path = Path(faces_in[0])
                cli_query = subprocess.Popen(
                    [sys.executable, "-m", "mmrag", "query", "--image", str(cli_query_path), "--json"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
    _, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 0, stderr
    assert len(snapshots) >= 2, "the indexer finished before the collection could be read during a run"
    assert snapshots == sorted(snapshots)  # nothing committed ever disappears during an ingest
    assert cli_query is not None and cli_query_path is not None, "no photo committed while the indexer ran"
    query_out, query_err = cli_query.communicate(timeout=300)
    assert cli_query.returncode == 0, query_err
    assert Path(json.loads(query_out)[0]["path"]).resolve() == cli_query_path.resolve()

    rt = open_runtime(tiny_settings)
    try:
        with rt.db.session() as session:
            n_items = session.query(Item).count()
            n_docs = session.query(Document).filter(Document.status == "indexed").count()
        assert n_docs == len(sources) == n_items == rt.collection.store.count("clip.image")
        (top,) = rt.retriever().search(image=query_image, k=1)
        assert Path(top.path).name == "lfw_007.png"
    finally:
        rt.close()
