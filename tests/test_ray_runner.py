"""The Ray runner against the local runner, on a real local Ray cluster (one per module, 2 CPUs, a small
object store): the same corpus gives the same documents, items, vectors, captions and query results.

Every model stage runs as its own actor pool: EfficientNet-Lite0 labels and RapidOCR (caption road), the
tiny CLIP and MiniLM (real weights).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from mmrag.ingest.plan import FileOutcome, IndexReport, NoProgress
from mmrag.ingest.runners import make_runner
from mmrag.runtime import Runtime, open_runtime
from mmrag.settings import Settings
from mmrag.store.db import Database
from mmrag.store.models import Caption, Document, Item, ItemVector
from tests.conftest import ASSETS, TINY_CLIP, tiny_clip_env
from tests.realdata import photo_bytes, photo_image, write_markdown, write_pdf_with_photos, write_photos
from tests.s3_server import CREDENTIALS, S3Server, s3_server

ray = pytest.importorskip("ray", reason="the Ray runner's tests need Ray: pip install 'mmrag[ray]'")
pytestmark = pytest.mark.slow  # a Ray cluster and four model actors: about a minute per run here


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for key, value in CREDENTIALS.items():  # the workers start with this environment: S3 for every test
        os.environ.setdefault(key, value)
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        logging_level="WARNING",
    )
    yield
    ray.shutdown()


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "models": {"clip": TINY_CLIP, "model_config_paths": [ASSETS], "batch_size": 8, "device": "cpu"},
        "spaces": {"clip": True, "text": True},
        "caption": {"backend": "efficientnet", "ocr": True, "batch_size": 4},
        "generate": {"backend": "none"},
        "ingest": {
            "road": "both",
            "ray": {"cpus_per_worker": 0.25, "extract_cpus": 0.5, "batch_size": {"text": 16}},
        },
    }
    return Settings(data_dir=data_dir, **{**fields, **overrides})


def _index(runner: str, settings: Settings, roots: list[Any], progress: Any = None) -> IndexReport:
    rt = open_runtime(settings)
    try:
        chosen = make_runner(runner, settings, rt.collection, rt.vectoriser())
        with rt.collection.writer():
            report = chosen.run(roots, progress=progress)
        _LAST_STATS[:] = [getattr(chosen, "execution_stats", "")]
        return report
    finally:
        rt.close()


_LAST_STATS: list[str] = []  # the Ray dataset's execution stats of the last _index


def _contents(settings: Settings) -> dict[str, Any]:
    """Everything a run leaves in the database, independent of ids and commit order."""
    db = Database(settings.db_url)
    try:
        with db.session() as session:
            docs = {
                d.path: (d.kind, d.status, d.content_hash, d.size, d.error)
                for d in session.scalars(select(Document))
            }
            items: dict[str, list[tuple[Any, ...]]] = {}
            vectors: dict[tuple[str, int, str], np.ndarray] = {}
            for item, path in session.execute(
                select(Item, Document.path).join(Document, Document.id == Item.document_id).order_by(Item.id)
            ):
                position = len(items.setdefault(path, []))
                items[path].append(
                    (
                        item.modality,
                        item.page,
                        item.bbox,
                        item.text,
                        item.meta,
                        item.thumbnail,
                        item.content_hash,
                    )
                )
                for vec in session.scalars(select(ItemVector).where(ItemVector.item_id == item.id)):
                    vectors[(path, position, vec.space)] = np.frombuffer(vec.vector, dtype=np.float16)
            captions = {
                (c.image_hash, c.captioner_id, c.text, c.error) for c in session.scalars(select(Caption))
            }
    finally:
        db.close()
    return {"docs": docs, "items": items, "vectors": vectors, "captions": captions}


def _queries(rt: Runtime) -> list[list[tuple[str, str, int | None]]]:
    retriever = rt.retriever()
    results = []
    for text, image in (("a cat", None), ("coffee cup on a saucer", None), (None, photo_image("rocket"))):
        hits = retriever.search(text, image, k=8)
        results.append([(Path(h.path).name, h.modality, h.page) for h in hits])
    return results


def _corpus(folder: Path) -> Path:
    write_photos(folder, ["chelsea", "coffee", "rocket", "page"])
    write_pdf_with_photos(
        folder / "manual.pdf",
        [["astronaut"], ["camera", "astronaut"]],
        text=["The astronaut in the launch photo.", "A man with a camera, and the astronaut again."],
    )
    write_markdown(folder / "guide.md")
    (folder / "broken.jpg").write_bytes(photo_bytes("coins")[:1500])  # reported, the run goes on
    return folder


def test_both_runners_give_the_same_collection(cluster: None, tmp_path: Path) -> None:
    library = _corpus(tmp_path / "library")
    local_settings, ray_settings = _settings(tmp_path / "local"), _settings(tmp_path / "ray")
    reports = {
        name: _index(name, s, [library]) for name, s in (("local", local_settings), ("ray", ray_settings))
    }
    (stats,) = _LAST_STATS  # extraction ran as tasks of its own, not fused into a model actor
    assert "MapBatches(extract_files)" in stats and "MapBatches(extract_files)->" not in stats

    def summary(report: IndexReport) -> tuple[Any, ...]:
        failed = sorted((Path(f.path).name, f.reason) for f in report.failed)
        return report.indexed, report.items, report.unchanged, failed, report.interrupted

    assert summary(reports["ray"]) == summary(reports["local"])
    assert reports["ray"].indexed == 6 and [Path(f.path).name for f in reports["ray"].failed] == [
        "broken.jpg"
    ]
    local, remote = _contents(local_settings), _contents(ray_settings)
    assert remote["docs"] == local["docs"]
    assert remote["items"] == local["items"]  # fields, captions, OCR text, thumbnails, in item order
    assert remote["captions"] == local["captions"]
    assert remote["vectors"].keys() == local["vectors"].keys()
    assert {space for _, _, space in remote["vectors"]} == {"clip", "text"}
    for key, vector in local["vectors"].items():
        np.testing.assert_allclose(remote["vectors"][key], vector, atol=2e-3, err_msg=str(key))
    runtimes = [open_runtime(local_settings), open_runtime(ray_settings)]
    try:
        assert _queries(runtimes[1]) == _queries(runtimes[0])
    finally:
        for rt in runtimes:
            rt.close()
    again = _index("ray", ray_settings, [library])  # nothing changed: no cluster work at all
    assert (again.unchanged, again.indexed, len(again.failed)) == (6, 0, 1)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.make_bucket("inbox")
        server.make_bucket("media")
        yield server


def _cluster_idle(wait_s: float = 60.0) -> bool:
    """Every CPU of the cluster free again (actors hand theirs back as they exit)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) == ray.cluster_resources().get("CPU"):
            return True
        time.sleep(0.5)
    return False


def test_mmrag_index_runner_ray_on_a_running_cluster_reads_s3_and_writes_blobs_to_s3(
    cluster: None, s3: S3Server, tmp_path: Path
) -> None:
    """The command as a user types it, joining the cluster by its address (the driver ships its mmrag
    package to the cluster), with an S3 folder as input and the thumbnails in an S3 blob store."""
    for name in ("chelsea", "rocket"):
        s3.client().put_object(Bucket="inbox", Key=f"photos/{name}.jpg", Body=photo_bytes(name))
    address = ray.get_runtime_context().gcs_address
    env = {
        **os.environ,
        **tiny_clip_env(tmp_path / "data"),
        "MMRAG_BLOBS__URL": "s3://media/thumbs",
        "MMRAG_BLOBS__S3__ENDPOINT_URL": s3.endpoint,
        "MMRAG_INGEST__RAY__CPUS_PER_WORKER": "0.5",
        "MMRAG_INGEST__RAY__EXTRACT_CPUS": "0.5",
    }
    command = ["index", "s3://inbox/photos", "--runner", "ray", "--ray-address", address]
    done = subprocess.run(
        [sys.executable, "-m", "mmrag", *command], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "indexed 2 files (2 items)" in done.stderr
    settings = _settings(  # what the command used (tiny_clip_env)
        tmp_path / "data",
        spaces={"clip": True, "text": False},
        ingest={"road": "clip"},
        blobs={"url": "s3://media/thumbs", "s3": s3.settings()},
    )
    rt = open_runtime(settings)
    try:
        (hit,) = rt.retriever().search(image=photo_image("rocket"), k=1)
        assert hit.path == "s3://inbox/photos/rocket.jpg"
        assert s3.keys("media", f"thumbs/{hit.thumbnail}") == [f"thumbs/{hit.thumbnail}"]
    finally:
        rt.close()
    assert _cluster_idle()  # joined, not started: the cluster stays up, with nothing left running on it


class _StopAfterFirstFile(NoProgress):
    def __init__(self) -> None:
        self.done: list[FileOutcome] = []

    def file_done(self, outcome: FileOutcome) -> None:
        self.done.append(outcome)
        if outcome.status == "indexed":
            raise KeyboardInterrupt  # Ctrl-C while the cluster works on the other files


def test_ctrl_c_stops_the_cluster_work_and_keeps_what_was_committed(cluster: None, tmp_path: Path) -> None:
    library = tmp_path / "library"
    write_photos(library, ["chelsea", "coffee", "rocket", "astronaut", "moon", "coins", "camera", "clock"])
    settings = _settings(
        tmp_path / "data",
        models={"clip": TINY_CLIP, "model_config_paths": [ASSETS], "batch_size": 1, "device": "cpu"},
        spaces={"clip": True, "text": False},
        ingest={"road": "clip", "ray": {"cpus_per_worker": 0.5, "extract_cpus": 0.5}},
    )
    sink = _StopAfterFirstFile()
    report = _index("ray", settings, [library], progress=sink)
    assert report.interrupted and report.indexed == 1
    assert _cluster_idle(), ray.available_resources()  # the dataset's actors and tasks went with the run
    rest = _index("ray", settings, [library])
    assert (rest.unchanged, rest.indexed) == (1, 7)


def test_the_service_hands_large_jobs_to_the_ray_cluster(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmrag.ingest.runners.ray import RayRunner
    from tests.api_server import api_settings, image_query, ingest, serve

    ran_on_ray: list[int] = []
    run = RayRunner.run

    def spied_run(self: RayRunner, roots: list[Any], *args: Any, **kwargs: Any) -> IndexReport:
        ran_on_ray.append(len(roots))
        return run(self, roots, *args, **kwargs)

    monkeypatch.setattr(RayRunner, "run", spied_run)
    base = api_settings(tmp_path / "data")
    settings = base.model_copy(
        update={
            "ingest": base.ingest.model_copy(
                update={"runner": "ray", "ray": base.ingest.ray.model_copy(update={"cpus_per_worker": 0.5})}
            ),
            "api": base.api.model_copy(update={"ray_min_files": 2}),
        }
    )
    with serve(settings) as server, server.client() as client:
        small = ingest(client, "handoff", [("cat.jpg", photo_bytes("chelsea"))])  # in the replica
        large = ingest(client, "handoff", [(f"{n}.jpg", photo_bytes(n)) for n in ("rocket", "coffee")])
        top = image_query(client, "handoff", photo_bytes("rocket"), k=1).json()["hits"][0]
    assert small["status"] == large["status"] == "done" and large["counts"]["indexed"] == 2
    assert ran_on_ray == [2]  # only the job of ray_min_files files went to the cluster
    assert top["path"].endswith("rocket.jpg")
