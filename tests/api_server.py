"""The REST service on a real loopback port, for the tests of mmrag.api (tests/test_api*.py).

with serve(api_settings(tmp_path / "data", key_hashes=[hash_api_key(KEY)])) as server:
    client = server.client(KEY)
    job = upload(client, "default", [("chelsea.jpg", photo_bytes("chelsea"))])
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from mmrag.api import create_app
from mmrag.settings import Settings
from tests.conftest import ASSETS, TINY_CLIP

READY_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 300.0


def api_settings(
    data_dir: Path,
    *,
    key_hashes: Sequence[str] = (),
    generate: dict[str, Any] | None = None,
    **api: Any,
) -> Settings:
    """The tiny CLIP alone (no text space): these tests are about the service, not the models."""
    return Settings(
        data_dir=data_dir,
        models={"clip": TINY_CLIP, "model_config_paths": [ASSETS], "batch_size": 8, "device": "cpu"},
        spaces={"clip": True, "text": False},
        generate=generate or {"backend": "none"},
        api={"api_key_hashes": list(key_hashes), "workers": 4, **api},
    )


@dataclass
class RunningServer:
    base_url: str
    app: FastAPI
    settings: Settings

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)


@contextmanager
def serve(settings: Settings, wait_ready: bool = True) -> Iterator[RunningServer]:
    """uvicorn in a thread, on a port the kernel picked; stopped (lifespan shutdown included) on exit."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(f"http://127.0.0.1:{port}", app, settings)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        if wait_ready:
            wait_until_ready(running)
        yield running
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def wait_until_ready(server: RunningServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        while True:
            response = client.get("/ready")
            if response.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not get ready: {response.text}")
            time.sleep(0.05)


def upload(
    client: httpx.Client,
    collection: str,
    files: Sequence[tuple[str, bytes]],
    options: dict[str, Any] | None = None,
) -> httpx.Response:
    data = {"options": json.dumps(options)} if options is not None else None
    return client.post(
        f"/v1/collections/{collection}/documents",
        files=[("files", (name, content, "application/octet-stream")) for name, content in files],
        data=data,
    )


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in ("done", "failed"):
            return job  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.05)


def ingest(
    client: httpx.Client,
    collection: str,
    files: Sequence[tuple[str, bytes]],
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Upload, wait for the job, return it (its files by name in job["by_name"])."""
    response = upload(client, collection, files, options)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    job["by_name"] = {entry["name"]: entry for entry in job["files"]}
    return job


def image_query(
    client: httpx.Client, collection: str, image: bytes, k: int = 5, **extra: Any
) -> httpx.Response:
    body = {"image_base64": base64.b64encode(image).decode(), "k": k, **extra}
    return client.post(f"/v1/collections/{collection}/query", json=body)


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event name, parsed JSON data) of each server-sent event in a response body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        events.append((name, json.loads("\n".join(data))))
    return events
