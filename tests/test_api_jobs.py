"""Ingest jobs live in the database: their status outlives a restart, and a job the service did not finish
runs when it starts again. Server-side folder ingest stays under the configured roots."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mmrag.api import jobs
from mmrag.api.jobs import JobStore
from mmrag.store.db import Database
from tests.api_server import api_settings, image_query, ingest, serve, wait_for_job
from tests.conftest import tiny_clip_env
from tests.realdata import photo_bytes, write_photos


@pytest.mark.slow  # two service starts
def test_job_status_survives_a_restart_and_unfinished_jobs_resume(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "data")
    with serve(settings) as server, server.client() as client:
        job = ingest(client, "kept", [("cat.jpg", photo_bytes("chelsea"))], options={"metadata": {"v": 1}})
        again = ingest(client, "kept", [("cat.jpg", photo_bytes("chelsea"))], options={"metadata": {"v": 2}})
        assert again["files"][0]["status"] == "unchanged"  # same bytes, same name: indexed once
        assert again["files"][0]["document_id"] == job["files"][0]["document_id"]
        (doc,) = client.get("/v1/collections/kept/documents").json()["documents"]
        assert doc["metadata"] == {"v": 2}  # ...but it takes the new metadata

    # While the service is down, a job is queued for a file already in its uploads folder (as an upload
    # interrupted by a restart leaves it).
    stored = settings.data_dir / "uploads" / "kept" / "manual" / "rocket.jpg"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(photo_bytes("rocket"))
    db = Database(settings.db_url)
    pending = JobStore(db).create(
        "kept", "upload", [{"name": "rocket.jpg", "path": str(stored), "kind": "image", "size": 1}], {}
    )
    db.close()

    with serve(settings) as server, server.client() as client:
        before = client.get(f"/v1/jobs/{job['id']}").json()
        assert before["status"] == "done" and before["files"][0]["name"] == "cat.jpg"
        resumed = wait_for_job(client, pending.id)
        assert resumed["status"] == "done" and resumed["files"][0]["status"] == "indexed"
        top = image_query(client, "kept", photo_bytes("rocket")).json()["hits"][0]
        assert top["document_id"] == resumed["files"][0]["document_id"]


def test_a_running_job_shows_the_files_done_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job row is rewritten as files finish (the web page's per-file progress), not only at the end."""
    monkeypatch.setattr(jobs, "_REPORT_EVERY_S", 0.0)  # every file, not at most once a second
    progress: list[list[tuple[str, str]]] = []
    embedded: list[int] = []
    update = JobStore.update

    def recording_update(self: JobStore, job_id: str, **fields: object) -> None:
        if "files" in fields and "status" not in fields:  # a progress report, not the job's end
            progress.append([(f["name"], f["status"]) for f in fields["files"]])  # type: ignore[attr-defined]
            embedded.append(fields["counts"]["items_embedded"])  # type: ignore[index]
        update(self, job_id, **fields)

    monkeypatch.setattr(JobStore, "update", recording_update)
    settings = api_settings(tmp_path / "data")
    settings = settings.model_copy(update={"models": settings.models.model_copy(update={"batch_size": 1})})
    files = [("cat.jpg", photo_bytes("chelsea")), ("bad.jpg", photo_bytes("coffee")[:3000])]
    files += [("moon.jpg", photo_bytes("moon")), ("coins.jpg", photo_bytes("coins"))]
    with serve(settings) as server, server.client() as client:
        job = ingest(client, "progress", files)
    final = [(f["name"], f["status"]) for f in job["files"]]
    assert sorted(final) == [
        ("bad.jpg", "failed"),
        ("cat.jpg", "indexed"),
        ("coins.jpg", "indexed"),
        ("moon.jpg", "indexed"),
    ]
    # reports as items are embedded and as files finish (batch_size 1 commits them one by one): each holds
    # the files of the one before, the file count grows one at a time, items embedded never go back
    assert all(later[: len(earlier)] == earlier for earlier, later in itertools.pairwise(progress))
    assert {len(p) for p in progress} - {0} == {1, 2, 3, 4}
    assert embedded == sorted(embedded) and embedded[-1] == 3  # three images have vectors; bad.jpg none
    assert progress[-1] == final


def test_folder_ingest_only_under_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    write_photos(root / "photos", ["coins", "moon"])
    outside = tmp_path / "private"
    write_photos(outside, ["camera"])
    (root / "photos" / "escape").symlink_to(outside, target_is_directory=True)
    settings = api_settings(tmp_path / "data", allowed_roots=[root])
    with serve(settings) as server, server.client() as client:
        folders = "/v1/collections/shared/folders"
        accepted = client.post(folders, json={"path": str(root / "photos")})
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(client, accepted.json()["job_id"])
        assert job["kind"] == "folder" and job["counts"]["indexed"] == 2
        outcomes = {Path(f["name"]).name: f for f in job["files"]}
        assert {n for n, f in outcomes.items() if f["status"] == "indexed"} == {"coins.jpg", "moon.jpg"}
        assert outcomes["escape"]["status"] != "indexed"  # the walk does not follow the link out

        for path, status in [
            (str(outside), 403),
            (str(root / "photos" / "escape"), 403),  # a link inside the root to a folder outside it
            (str(root / ".." / "private"), 403),
            ("photos", 422),
            (str(root / "missing"), 404),
        ]:
            response = client.post(folders, json={"path": path})
            assert response.status_code == status, (path, response.text)
            assert response.json()["message"]

        (root / "photos" / "coins.jpg").unlink()
        pruned = client.post(folders, json={"path": str(root / "photos"), "prune": True})
        wait_for_job(client, pruned.json()["job_id"])
        names = [d["name"] for d in client.get("/v1/collections/shared/documents").json()["documents"]]
        assert names == ["moon.jpg"]

        # generate.backend none: /ask still answers, with what it retrieved and why there is no answer
        asked = client.post("/v1/collections/shared/ask", json={"question": "the moon?"})
        assert asked.status_code == 200, asked.text
        body = asked.json()
        assert body["answer"] is None and "answer generation is off" in body["error"]
        assert [s["path"] for s in body["left_out"]] == [str((root / "photos" / "moon.jpg").resolve())]


@pytest.mark.slow  # a fresh Python process imports torch and open_clip
def test_mmrag_serve_runs_the_service_until_terminated(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **tiny_clip_env(tmp_path / "data"), "MMRAG_GENERATE__BACKEND": "none"}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "mmrag serve did not get ready"
            time.sleep(0.2)
        listed = httpx.get(f"{base}/v1/collections", timeout=10).json()["collections"]
        assert [c["name"] for c in listed] == ["default"]
    finally:
        process.terminate()
        code = process.wait(60)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells how it ended
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "no API keys configured" in output
