"""schemathesis against the service's own OpenAPI schema, run as its CLI runs it: every phase (examples,
coverage, fuzzing, stateful) and every check, over real HTTP. No answer may be a server error, and every
answer must be what the schema documents: its status, content type, body (each event of a stream too),
headers, the `Allow` of a 405; schema-valid requests must be accepted and invalid ones refused.
tests/schemathesis.toml holds the two statuses the schema cannot express (files typed by their bytes: 415;
over the file-count limit: 413)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.api.security import new_api_key
from mmrag.ingest.mupdf import pymupdf
from tests.api_server import RunningServer, api_settings, ingest, serve
from tests.realdata import photo_bytes

KEY, KEY_HASH = new_api_key()
CONFIG = Path(__file__).parent / "schemathesis.toml"
EXAMPLES_PER_OPERATION = 10  # ~700 requests in all: the coverage phase adds its own, per operation
OPERATIONS = 17  # 14 under /v1, and /health, /ready, /metrics


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("schema") / "data"
    with serve(api_settings(data_dir, key_hashes=[KEY_HASH], allowed_roots=[data_dir.parent])) as running:
        with running.client(KEY) as client:  # something to find, so queries and items have real answers
            ingest(
                client, "default", [("chelsea.jpg", photo_bytes("chelsea")), ("note.md", b"# Note\n\ncats\n")]
            )
            # the item the item routes are tested with, where the generated deletes (of "default"'s
            # documents 1, 2, ...) do not reach it; the PDF shows another photo (copies of one picture
            # would be folded into one hit)
            kept = [("coffee.jpg", photo_bytes("coffee")), ("figure.pdf", _pdf_of("astronaut"))]
            ingest(client, "kept", kept)
        yield running


def _pdf_of(photo: str) -> bytes:
    """A one-page PDF showing a photo: an item with a page, for the page route."""
    document = pymupdf.open()
    document.new_page().insert_image(pymupdf.Rect(72, 72, 372, 272), stream=photo_bytes(photo))
    return document.tobytes()


def _config(server: RunningServer, folder: Path) -> Path:
    """tests/schemathesis.toml, and an item that exists: random ids would only ever meet 404s, and the item
    and its pictures (thumbnail, original) are answers whose schema and content type are worth checking."""
    with server.client(KEY) as client:
        hits = client.post("/v1/collections/kept/query", json={"text": "coffee", "k": 5}).json()["hits"]
    photo = next(hit["item_id"] for hit in hits if hit["page"] is None)
    on_page = next(hit["item_id"] for hit in hits if hit["page"] is not None)
    config = folder / "schemathesis.toml"
    items = (
        f'[[operations]]\ninclude-path-regex = "^/v1/items/\\\\{{item_id\\\\}}(/image)?$"\n'
        f"parameters = {{ item_id = {photo} }}\n\n"
        f'[[operations]]\ninclude-path = "/v1/items/{{item_id}}/page"\n'
        f"parameters = {{ item_id = {on_page} }}\n"
    )
    config.write_text(CONFIG.read_text() + "\n" + items)
    return config


@pytest.mark.slow  # ~700 generated requests: about 2 minutes on 2 cores
def test_schemathesis_finds_no_failure_of_any_check(server: RunningServer, tmp_path: Path) -> None:
    paths = server.app.openapi()["paths"].values()
    assert sum(len(methods) for methods in paths) == OPERATIONS  # a new route is tested here too
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(_config(server, tmp_path)),
        "--no-color",
        "run",
        f"{server.base_url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"X-API-Key: {KEY}",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "1",  # the same requests every run
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0, output
    summary = json.loads(report.read_text())
    print({key: summary[key] for key in ("running_time", "operations", "test_cases")})
    assert summary["complete"] and summary["operations"]["tested"] == OPERATIONS
    assert summary["test_cases"]["generated"] > 500, summary["test_cases"]
    assert summary["failures"] == [] and summary["errors"] == [], output
    assert all(phase["status"] == "success" for phase in summary["phases"].values()), summary["phases"]
    assert summary["warnings"]["validation_mismatch"] == [], summary["warnings"]
    assert summary["warnings"]["missing_test_data"] == [], summary["warnings"]  # the items are reached
