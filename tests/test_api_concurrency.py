"""Queries keep being answered, and answered right, while an ingest job writes to the same collection."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from tests.api_server import api_settings, image_query, ingest, serve, upload, wait_for_job
from tests.realdata import photo_bytes, photo_image

KNOWN = ("chelsea", "coffee", "rocket")  # indexed first; queried during the job
NEW = (
    "astronaut",
    "camera",
    "coins",
    "moon",
    "clock",
    "hubble_deep_field",
    "page",
    "china",
    "flower",
    "grace_hopper",
)
QUERY_THREADS = 3


def _variants() -> list[tuple[str, bytes]]:
    """120 real photos for the job: the NEW photos, each turned 4 ways, in 3 formats."""
    files = []
    for name in NEW:
        image = photo_image(name).convert("RGB")
        for turn in range(4):
            turned = image.rotate(90 * turn, expand=True)
            for fmt in ("jpeg", "png", "webp"):
                buffer = io.BytesIO()
                turned.save(buffer, format=fmt.upper())
                files.append((f"{name}-{turn}.{fmt}", buffer.getvalue()))
    return files


@pytest.mark.slow  # 120 photos through the job: ~30 s on 2 cores
def test_queries_are_answered_correctly_while_a_job_writes(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "data", max_files_per_request=200)
    with serve(settings) as server, server.client() as client:
        first = ingest(client, "busy", [(f"{n}.jpg", photo_bytes(n)) for n in KNOWN])
        expected = {name: first["by_name"][f"{name}.jpg"]["document_id"] for name in KNOWN}
        files = _variants()
        accepted = upload(client, "busy", files)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]

        done = threading.Event()
        wrong: list[str] = []
        overlapped = [0] * QUERY_THREADS  # queries that began and ended while the job was running

        def query_until_done(slot: int) -> None:
            with server.client() as own:
                while not done.is_set():
                    for name in KNOWN:
                        before = own.get(f"/v1/jobs/{job_id}").json()["status"]
                        response = image_query(own, "busy", photo_bytes(name), k=3)
                        after = own.get(f"/v1/jobs/{job_id}").json()["status"]
                        if response.status_code != 200:
                            wrong.append(f"{name}: HTTP {response.status_code} {response.text}")
                        elif response.json()["hits"][0]["document_id"] != expected[name]:
                            wrong.append(f"{name}: top hit {response.json()['hits'][0]}")
                        elif before == after == "running":
                            overlapped[slot] += 1
                        if after in ("done", "failed"):
                            return

        threads = [threading.Thread(target=query_until_done, args=(i,)) for i in range(QUERY_THREADS)]
        for thread in threads:
            thread.start()
        job = wait_for_job(client, job_id)
        done.set()
        for thread in threads:
            thread.join(120)

        assert not wrong, wrong[:5]
        assert sum(overlapped) > 0, "no query ran while the job was writing: make the job bigger"
        assert job["status"] == "done" and job["counts"] == {"indexed": len(files), "items": len(files)}
        # what the job wrote is searchable, each file under its own document
        by_name = {entry["name"]: entry["document_id"] for entry in job["files"]}
        for name, content in files[::17]:
            top = image_query(client, "busy", content, k=1).json()["hits"][0]
            assert top["document_id"] == by_name[name], name
        listed = client.get("/v1/collections/busy/documents", params={"limit": 1000}).json()
        assert listed["total"] == len(KNOWN) + len(files)
