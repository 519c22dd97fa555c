"""The reliability campaign's hostile inputs (issue #16), kept in the suite: every class of bad input has
its expected outcome, and the memory of the process that met it stays within a stated bound over the
process's own floor (models loaded, nothing read), measured in a subprocess.

Query images go through the CLI and a real `mmrag serve` process (REST query and ask), whose peak RSS
(VmHWM) is read from /proc.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import tiny_clip_env
from tests.hostile import CLASSES, MAX_PDF_PAGES, Expected, write_corpus, write_query_strip
from tests.realdata import photo_bytes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# What one hostile file may add to a process's peak memory over its floor. The campaign saw +17 GB for a
# 1x100000 query image and +4 GB for a 200 MB text file; a sound run adds tens of MB.
PEAK_OVER_FLOOR_MB = 400


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        **tiny_clip_env(data_dir),
        "MMRAG_INGEST__MAX_PDF_PAGES": str(MAX_PDF_PAGES),
        "MMRAG_GENERATE__BACKEND": "none",
    }


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    expected = write_corpus(root / "corpus")
    data = root / "data"
    result = subprocess.run(
        [sys.executable, "-m", "tests.hostile_driver", str(root / "corpus")],
        env=_env(data),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    yield {
        "root": root,
        "data": data,
        "expected": expected,
        "floor_mb": lines[0]["peak_rss_mb"],
        "results": {line["class"]: line for line in lines[1:]},
    }


def test_the_corpus_holds_every_class(campaign: dict[str, Any]) -> None:
    assert sorted(campaign["expected"]) == sorted(CLASSES) == sorted(campaign["results"])
    assert len(CLASSES) >= 24


@pytest.mark.parametrize("cls", CLASSES)
def test_hostile_input_has_its_outcome_and_bounded_memory(campaign: dict[str, Any], cls: str) -> None:
    expected: Expected = campaign["expected"][cls]
    got = campaign["results"][cls]
    files = got["files"]
    assert {name: f["status"] for name, f in files.items()} == expected.statuses, files
    for name, words in expected.reasons.items():
        assert words.lower() in (files[name]["reason"] or "").lower(), files[name]
    for name, count in expected.items.items():
        assert files[name]["items"] == count, files[name]
    for name, outcome in files.items():
        if outcome["status"] == "failed":
            assert outcome["reason"], f"{name} failed without a reason"
    peak_over = got["peak_rss_mb"] - campaign["floor_mb"]
    assert peak_over < PEAK_OVER_FLOOR_MB, f"{cls}: peak RSS {peak_over:.0f} MB over the floor"


def test_collection_is_consistent_after_the_campaign(campaign: dict[str, Any]) -> None:
    data = campaign["data"]
    res = _mmrag(data, "stats", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert sum(ix["count"] for ix in info["indexes"].values()) == sum(info["items"].values()) > 0
    # The name that is not UTF-8: stored printable, and byte for byte to reopen the file.
    engine = create_engine(f"sqlite:///{data / 'mmrag.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("select path, path_bytes from documents where path like '%caf%'")).all()
    engine.dispose()
    (path, raw), *_ = rows
    assert path.endswith("caf\\xe9-\\xff.jpg")
    assert raw.endswith(b"caf\xe9-\xff.jpg") and Path(os.fsdecode(raw)).is_file()


def _mmrag(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmrag", *args], env=_env(data), capture_output=True, text=True, timeout=300
    )


def _peak_of_child_mb(data: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `mmrag ARGS` under a Python wrapper whose only child it is: the wrapper's RUSAGE_CHILDREN peak
    is that command's."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(done.returncode)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "mmrag", *args],
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak_kb = int(res.stderr.strip().splitlines()[-1])
    return res, peak_kb / 1024


def test_cli_query_with_a_1x100000_image_stays_bounded(campaign: dict[str, Any]) -> None:
    data, root = campaign["data"], campaign["root"]
    (root / "coffee.jpg").write_bytes(photo_bytes("coffee"))
    strip = write_query_strip(root / "strip.png")
    normal, floor = _peak_of_child_mb(data, "query", "--image", str(root / "coffee.jpg"), "--json")
    assert normal.returncode == 0, normal.stderr
    res, peak = _peak_of_child_mb(data, "query", "--image", str(strip), "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 3
    assert peak - floor < PEAK_OVER_FLOOR_MB, f"query image strip: {peak:.0f} MB against {floor:.0f} MB"


@pytest.fixture(scope="module")
def server(campaign: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A real `mmrag serve` on the campaign's data dir, allowed to ingest folders of the corpus."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = campaign["root"]
    env = {**_env(campaign["data"]), "MMRAG_API__ALLOWED_ROOTS": json.dumps([str(root / "corpus")])}
    log_path = root / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mmrag", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "mmrag serve did not get ready"
                time.sleep(0.2)
            with httpx.Client(base_url=base, timeout=120) as client:
                yield {"client": client, "pid": process.pid, "root": root}
        finally:
            process.terminate()
            process.wait(60)


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest resident set the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_rest_query_and_ask_with_a_1x100000_image_stay_bounded(server: dict[str, Any]) -> None:
    client, pid = server["client"], server["pid"]
    normal = client.post(
        "/v1/collections/default/query",
        files={"image": ("coffee.jpg", photo_bytes("coffee"), "image/jpeg")},
        data={"k": "3"},
    )
    assert normal.status_code == 200, normal.text
    floor = _peak_rss_mb(pid)
    strip = write_query_strip(server["root"] / "strip-rest.png").read_bytes()
    for route in ("query", "ask"):
        field = {"k": "3"} if route == "query" else {"question": "what is this?", "k": "3"}
        res = client.post(
            f"/v1/collections/default/{route}",
            files={"image": ("strip.png", strip, "image/png")},
            data=field,
        )
        assert res.status_code == 200, res.text
    peak = _peak_rss_mb(pid)
    assert peak - floor < PEAK_OVER_FLOOR_MB, f"REST strip image: {peak:.0f} MB against {floor:.0f} MB"


def test_rest_folder_ingest_reports_a_file_name_that_is_not_utf8(server: dict[str, Any]) -> None:
    client = server["client"]
    folder = server["root"] / "corpus" / "name_not_utf8"
    accepted = client.post("/v1/collections/rest/folders", json={"path": str(folder)})
    assert accepted.status_code == 202, accepted.text
    job_url = accepted.json()["status_url"]
    deadline = time.monotonic() + 300
    while (job := client.get(job_url).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "done", job
    (entry,) = job["files"]
    assert entry["status"] == "indexed" and entry["name"].endswith("caf\\xe9-\\xff.jpg"), entry
