"""The upload size limit is enforced while the body streams in: the server answers 413 long before the
client has sent the body, and no file on the server ever holds more than the limit."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.api_server import RunningServer, api_settings, ingest, serve
from tests.realdata import photo_bytes

LIMIT = 256 * 1024
BODY = 64 * 1024 * 1024  # what the client would send: 256 times the limit
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = api_settings(tmp_path_factory.mktemp("limits") / "data", max_upload_bytes=LIMIT)
    with serve(settings) as running:
        yield running


def _connect(server: RunningServer) -> socket.socket:
    url = urlsplit(server.base_url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def _multipart_head(boundary: str) -> bytes:
    return (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="files"; filename="huge.md"\r\n'
        "Content-Type: text/markdown\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (it does, after a 413)."""
    received = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not part:
            return received
        received += part


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_oversized_chunked_upload_is_refused_while_it_streams(server: RunningServer) -> None:
    """No Content-Length: the server counts the bytes as they come and answers 413 when they pass the limit.
    The client keeps sending until it sees the answer; it has then sent a small part of the body."""
    boundary = "mmrag-test-boundary"
    head = (
        "POST /v1/collections/big/documents HTTP/1.1\r\n"
        f"Host: {urlsplit(server.base_url).netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    payload = b"# a very long note\n" + b"x" * (CHUNK - 19)
    sock = _connect(server)
    sock.sendall(head)
    sent = 0  # body bytes handed to the kernel
    pending = b""
    answered = False
    try:
        sock.setblocking(False)
        while sent < BODY:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                answered = True
                break
            if writable:
                if not pending:
                    data = (_multipart_head(boundary) if sent == 0 else b"") + payload
                    pending = f"{len(data):x}\r\n".encode() + data + b"\r\n"
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                pending = pending[n:]
                sent += n
        sock.setblocking(True)
        response = _read_response(sock)
    finally:
        sock.close()
    assert answered
    print(f"413 after {sent} of {BODY} body bytes")
    assert _status(response) == 413, response[:200]
    assert b"max_upload_bytes" in response
    # The answer came while most of the body was still unsent (socket buffers hold a few MiB at most).
    assert sent < BODY // 4, sent
    _assert_nothing_kept(server)


def test_declared_oversized_body_is_refused_before_it_is_sent(server: RunningServer) -> None:
    head = (
        "POST /v1/collections/big/documents HTTP/1.1\r\n"
        f"Host: {urlsplit(server.base_url).netloc}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {BODY}\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head)  # headers only: not a byte of the body
        response = _read_response(sock)
    assert _status(response) == 413 and b"max_upload_bytes" in response
    _assert_nothing_kept(server)


def test_uploads_within_the_limit_are_accepted(server: RunningServer) -> None:
    with server.client() as client:
        job = ingest(client, "small", [("coins.jpg", photo_bytes("coins"))])
    assert job["by_name"]["coins.jpg"]["status"] == "indexed"


def _sizes(folder: Path) -> list[int]:
    """Sizes of the files under `folder`, shrugging off files the server removes as we look."""
    sizes = []
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(os.stat(os.path.join(parent, name)).st_size)
    return sizes


def _assert_nothing_kept(server: RunningServer) -> None:
    """No file over the limit was written; the half-received upload is removed, nothing was stored."""
    uploads = Path(server.settings.data_dir) / "uploads"
    deadline = time.monotonic() + 30
    while True:
        sizes = _sizes(uploads / ".incoming") + _sizes(uploads / "big")
        assert all(size <= LIMIT for size in sizes), sizes
        if not sizes or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not sizes, "the partial upload was not removed"
