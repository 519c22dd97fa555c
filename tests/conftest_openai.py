"""pytest plugin: the OpenAI stub server as a real subprocess on loopback.

Load it with `pytest_plugins = ["conftest_openai"]`; import names from it only under TYPE_CHECKING, so pytest
imports it once, as a plugin.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STUB_SCRIPT = Path(__file__).with_name("openai_stub_server.py")
_START_TIMEOUT_S = 15.0


@dataclass
class StubServer:
    base_url: str
    port: int
    record_path: Path

    def records(self, model: str) -> list[dict[str, Any]]:
        """Every request the server saw for this model string, in arrival order."""
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if isinstance(r["body"], dict) and r["body"].get("model") == model]

    @staticmethod
    def unique(behaviour: str) -> str:
        """A model string whose per-model server state no other test shares."""
        return f"{behaviour}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_announced_port(process: subprocess.Popen[str]) -> int:
    announced: list[str] = []
    reader = threading.Thread(target=lambda: announced.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(_START_TIMEOUT_S)
    line = announced[0] if announced else ""
    if not line.startswith("LISTENING"):
        process.kill()
        raise RuntimeError(f"stub server did not start (see its stderr file): stdout={line!r}")
    return int(line.split()[2])


def _wait_until_accepting(port: int) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def openai_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubServer]:
    folder = tmp_path_factory.mktemp("openai_stub")
    record_path = folder / "requests.jsonl"
    # stderr goes to a file: a pipe nobody drains would block the server once it fills.
    stderr_file = (folder / "stderr.txt").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, str(STUB_SCRIPT), "--port", "0", "--record", str(record_path)],
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
    )
    try:
        port = _read_announced_port(process)
        _wait_until_accepting(port)
        yield StubServer(base_url=f"http://127.0.0.1:{port}/v1", port=port, record_path=record_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr_file.close()
