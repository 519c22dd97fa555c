"""Milvus Lite's gRPC server as its own process on a loopback port: one Milvus store that several processes
reach (`mmrag serve` replicas, a writer and a reader), as the README offers in place of a Milvus standalone.

    with milvus_lite_server(tmp_path / "milvus.db") as uri:   # uri = "http://127.0.0.1:PORT"
        settings = Settings(index={"backend": "milvus", "milvus": {"uri": uri}})
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def milvus_lite_server(data_dir: Path) -> Iterator[str]:
    """`milvus-lite server` (the console script of the milvus-lite package) on `data_dir`; its URI."""
    port = _free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "milvus-lite"),
            "server",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no milvus-lite server on port {port}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
