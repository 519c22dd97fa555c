"""The REST service's security checks (issue #16), over real HTTP on loopback, so they stay fixed: files are
served only from the data dir and the allowed roots, never through a link and never once replaced; keys
reach only their collections; bad paths are 422 and leave the connection usable; partial uploads of a dead
server are cleaned; no answer shows a server path."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from mmrag.api.security import hash_api_key, new_api_key
from mmrag.api.uploads import STALE_INCOMING_S
from mmrag.store.db import Database
from mmrag.store.models import Document, Item
from tests.api_server import RunningServer, api_settings, image_query, ingest, serve, upload, wait_for_job
from tests.realdata import photo_bytes, write_pdf_with_photos, write_photos

ADMIN, ADMIN_HASH = new_api_key()  # api.api_key_hashes: every collection, admin
PHOTOS_KEY, PHOTOS_HASH = new_api_key()  # api.keys: "photos" only
ANY_KEY, ANY_HASH = new_api_key()  # api.keys: "*", not an admin
SECRET = b"root:x:0:0:root:/root:/bin/bash\n"  # what an /etc/passwd looks like


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("security")
    data_dir, shared = base / "data", base / "shared"
    write_photos(shared / "pics", ["moon", "coins"])
    _leave_partial_uploads(data_dir / "uploads" / ".incoming")
    settings = api_settings(
        data_dir,
        key_hashes=[ADMIN_HASH],
        keys=[
            {"sha256": PHOTOS_HASH, "collections": ["photos"], "name": "photo app"},
            {"sha256": ANY_HASH, "collections": ["*"]},
        ],
        allowed_roots=[shared],
    )
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def admin(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(ADMIN) as client:
        yield client


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outside") / "passwd"
    path.write_bytes(SECRET)
    return path


def _db(server: RunningServer) -> Database:
    return Database(server.settings.db_url, migrate=False)


def _stored(server: RunningServer, client: httpx.Client, collection: str, document_id: int) -> Path:
    docs = client.get(f"/v1/collections/{collection}/documents").json()["documents"]
    (doc,) = [d for d in docs if d["id"] == document_id]
    path = Path(doc["path"])
    return path if path.is_absolute() else Path(server.settings.data_dir) / path


def _original(client: httpx.Client, item_id: int) -> httpx.Response:
    return client.get(f"/v1/items/{item_id}/image", params={"variant": "original"})


def _item_of(client: httpx.Client, collection: str, photo: str) -> int:
    hits = image_query(client, collection, photo_bytes(photo), k=1).json()["hits"]
    return int(hits[0]["item_id"])


# ---- item 9: partial uploads of a server that died mid-upload ---------------------------------------------


def _leave_partial_uploads(incoming: Path) -> None:
    """Two request folders as a killed server leaves them, and one another live server is still writing."""
    for name, age_s in (("dead-1", STALE_INCOMING_S + 60), ("dead-2", 3 * STALE_INCOMING_S), ("live", 5)):
        part = incoming / name / "0" / "photo.jpg"
        part.parent.mkdir(parents=True)
        part.write_bytes(photo_bytes("chelsea")[:5000])
        then = time.time() - age_s
        for path in (part, part.parent, part.parent.parent):
            os.utime(path, (then, then))


def test_partial_uploads_left_by_a_dead_server_are_removed_at_start(server: RunningServer) -> None:
    incoming = Path(server.settings.data_dir) / "uploads" / ".incoming"
    assert sorted(p.name for p in incoming.iterdir()) == ["live"]  # recent: another server may be writing it
    assert (incoming / "live" / "0" / "photo.jpg").is_file()


# ---- item 3: originals, thumbnails and PDF pages are read without following links --------------------------


def test_an_original_replaced_by_a_link_is_never_served(
    server: RunningServer, admin: httpx.Client, secret_file: Path
) -> None:
    jpeg = photo_bytes("chelsea")
    job = ingest(admin, "photos", [("chelsea.jpg", jpeg)])
    document_id = job["by_name"]["chelsea.jpg"]["document_id"]
    item_id = _item_of(admin, "photos", "chelsea")
    assert _original(admin, item_id).content == jpeg
    stored = _stored(server, admin, "photos", document_id)
    kept = stored.with_name("kept")
    stored.rename(kept)
    try:
        stored.symlink_to(secret_file)  # the attack: the indexed file is now a link to /etc/passwd
        refused = _original(admin, item_id)
        assert refused.status_code == 404 and SECRET not in refused.content
        assert "symbolic link" in refused.json()["message"]
        stored.unlink()

        # a link as a folder on the way, to a folder holding the very same bytes: still refused
        folder = stored.parent
        elsewhere = secret_file.parent / "copy"
        elsewhere.mkdir()
        shutil.copy2(kept, elsewhere / stored.name)
        folder.rename(folder.with_name("moved"))
        folder.symlink_to(elsewhere, target_is_directory=True)
        assert _original(admin, item_id).status_code == 404
        folder.unlink()
        folder.with_name("moved").rename(folder)

        stored.write_bytes(photo_bytes("rocket"))  # another picture under the indexed name
        changed = _original(admin, item_id)
        assert changed.status_code == 409 and "changed since it was indexed" in changed.json()["message"]
        assert str(server.settings.data_dir) not in changed.text
    finally:
        os.replace(kept, stored)
    later = time.time() + 30
    os.utime(stored, (later, later))  # touched, same bytes: the content hash says it is the indexed file
    assert _original(admin, item_id).content == jpeg


def test_a_thumbnail_replaced_by_a_link_is_never_served(server: RunningServer, admin: httpx.Client) -> None:
    ingest(admin, "photos", [("coffee.jpg", photo_bytes("coffee"))])
    item_id = _item_of(admin, "photos", "coffee")
    assert admin.get(f"/v1/items/{item_id}/image").status_code == 200
    db = _db(server)
    with db.session() as session:
        thumbnail = Path(server.settings.data_dir) / str(session.get(Item, item_id).thumbnail)  # type: ignore[union-attr]
    db.close()
    # a link that stays inside the data dir, to another collection's upload (or the SQLite database)
    target = Path(server.settings.data_dir) / "uploads" / "someone-else" / "notes.md"
    target.parent.mkdir(parents=True)
    target.write_bytes(SECRET)
    kept = thumbnail.read_bytes()
    thumbnail.unlink()
    thumbnail.symlink_to(target)
    try:
        refused = admin.get(f"/v1/items/{item_id}/image")
        assert refused.status_code == 404 and SECRET not in refused.content
    finally:
        thumbnail.unlink()
        thumbnail.write_bytes(kept)


def test_a_pdf_replaced_by_a_link_is_not_rendered(
    server: RunningServer, admin: httpx.Client, tmp_path: Path
) -> None:
    pdf = tmp_path / "figures.pdf"
    write_pdf_with_photos(pdf, [["astronaut"]])
    job = ingest(admin, "photos", [(pdf.name, pdf.read_bytes())])
    document_id = job["by_name"][pdf.name]["document_id"]
    hits = image_query(admin, "photos", photo_bytes("astronaut"), k=5).json()["hits"]
    item_id = next(h["item_id"] for h in hits if h["document_id"] == document_id and h["page"] == 1)
    rendered = _original(admin, item_id)
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    stored = _stored(server, admin, "photos", document_id)
    other = tmp_path / "other.pdf"
    write_pdf_with_photos(other, [["coins"]])
    stored.unlink()
    stored.symlink_to(other)
    try:
        assert _original(admin, item_id).status_code == 404
    finally:
        stored.unlink()
        shutil.copy2(pdf, stored)


def test_originals_are_served_only_from_the_data_dir_and_the_allowed_roots(
    server: RunningServer, admin: httpx.Client, secret_file: Path, tmp_path: Path
) -> None:
    folder = server.settings.api.allowed_roots[0] / "pics"
    accepted = admin.post("/v1/collections/shared/folders", json={"path": str(folder)})
    assert accepted.status_code == 202, accepted.text
    assert wait_for_job(admin, accepted.json()["job_id"])["counts"]["indexed"] == 2
    item_id = _item_of(admin, "shared", "moon")
    assert _original(admin, item_id).content == (folder / "moon.jpg").read_bytes()  # under an allowed root

    # The database says the same file, byte for byte, lies outside every root: it is not served.
    outside = tmp_path / "moon.jpg"
    shutil.copy2(folder / "moon.jpg", outside)
    db = _db(server)
    with db.session() as session:
        doc = session.scalar(select(Document).join(Item).where(Item.id == item_id))
        assert doc is not None
        indexed_path, doc.path = doc.path, str(outside)
    try:
        refused = _original(admin, item_id)
        assert refused.status_code == 404 and "allowed_roots" in refused.json()["message"]
    finally:
        with db.session() as session:
            doc = session.scalar(select(Document).join(Item).where(Item.id == item_id))
            doc.path = indexed_path  # type: ignore[union-attr]
        db.close()


# ---- item 4: keys scoped to collections -----------------------------------------------------------------


def _same_as_missing(response: httpx.Response, missing: httpx.Response) -> None:
    assert response.status_code == missing.status_code == 404
    assert response.json()["error"] == missing.json()["error"] == "not_found"


def test_a_key_reaches_only_its_collections(server: RunningServer, admin: httpx.Client) -> None:
    mine = ingest(admin, "photos", [("camera.jpg", photo_bytes("camera"))])
    theirs = ingest(admin, "private", [("astronaut.jpg", photo_bytes("astronaut"))])
    their_doc = theirs["by_name"]["astronaut.jpg"]["document_id"]
    their_item = _item_of(admin, "private", "astronaut")
    missing_item = 10**12

    with server.client(PHOTOS_KEY) as photos:
        names = {c["name"] for c in photos.get("/v1/collections").json()["collections"]}
        assert names == {"photos"}
        assert photos.get(f"/v1/jobs/{mine['id']}").status_code == 200
        assert _item_of(photos, "photos", "camera") == _item_of(admin, "photos", "camera")

        # another collection's item answers exactly like an id that does not exist
        item = photos.get(f"/v1/items/{their_item}")
        absent = photos.get(f"/v1/items/{missing_item}")
        _same_as_missing(item, absent)
        assert item.json()["message"] == absent.json()["message"].replace(str(missing_item), str(their_item))
        for variant in ({"variant": "thumbnail"}, {"variant": "original"}):
            image = photos.get(f"/v1/items/{their_item}/image", params=variant)
            _same_as_missing(image, photos.get(f"/v1/items/{missing_item}/image", params=variant))
        _same_as_missing(photos.get(f"/v1/jobs/{theirs['id']}"), photos.get("/v1/jobs/" + "f" * 32))

        # another collection's documents, queries and answers: as for a collection that does not exist
        for collection in ("private", "nothing-here"):
            assert photos.get(f"/v1/collections/{collection}/documents").status_code == 404
            assert image_query(photos, collection, photo_bytes("astronaut")).status_code == 404
            asked = photos.post(f"/v1/collections/{collection}/ask", json={"question": "who?"})
            assert asked.status_code == 404
            message = asked.json()["message"]
            assert message == f"no collection {collection!r}: nothing was ever indexed into it"
        deleted = photos.delete(f"/v1/collections/private/documents/{their_doc}")
        assert deleted.status_code == 404
        assert admin.get(f"/v1/items/{their_item}").status_code == 200  # still there

        # writing: only its collections; a new collection needs a key that names it
        for collection in ("private", "new-one"):
            refused = upload(photos, collection, [("c.jpg", photo_bytes("coins"))])
            assert refused.status_code == 403 and "photos" in refused.json()["message"]
        assert upload(photos, "photos", [("c.jpg", photo_bytes("coins"))]).status_code == 202
        folder = photos.post("/v1/collections/photos/folders", json={"path": "/"})
        assert folder.status_code == 403 and "admin" in folder.json()["message"]
        assert photos.get("/v1/keys").status_code == 403

    with server.client(ANY_KEY) as anywhere:  # "*": every collection, may create one, not an admin
        job = ingest(anywhere, "made-by-star", [("coins.jpg", photo_bytes("coins"))])
        assert job["status"] == "done"
        assert anywhere.get(f"/v1/items/{their_item}").status_code == 200
        assert anywhere.post("/v1/keys", json={"collections": ["photos"]}).status_code == 403


def test_admin_keys_make_list_and_revoke_scoped_keys(server: RunningServer, admin: httpx.Client) -> None:
    ingest(admin, "team-a", [("clock.jpg", photo_bytes("clock"))])
    ingest(admin, "team-b", [("moon.jpg", photo_bytes("moon"))])
    made = admin.post("/v1/keys", json={"name": "team a", "collections": ["team-a"]})
    assert made.status_code == 201, made.text
    body = made.json()
    key = body.pop("key")
    assert body["collections"] == ["team-a"] and body["admin"] is False and body["name"] == "team a"
    listed = admin.get("/v1/keys").json()["keys"]
    assert body in listed and all("key" not in entry for entry in listed)
    assert key not in admin.get("/v1/keys").text and hash_api_key(key) not in admin.get("/v1/keys").text

    with server.client(key) as team_a:
        assert {c["name"] for c in team_a.get("/v1/collections").json()["collections"]} == {"team-a"}
        assert image_query(team_a, "team-a", photo_bytes("clock")).status_code == 200
        assert image_query(team_a, "team-b", photo_bytes("moon")).status_code == 404
        assert team_a.post("/v1/keys", json={"collections": ["team-b"]}).status_code == 403

        assert admin.delete(f"/v1/keys/{body['id']}").json() == {"id": body["id"], "revoked": True}
        assert team_a.get("/v1/collections").status_code == 401  # from the next request on
    assert admin.delete(f"/v1/keys/{body['id']}").status_code == 404
    bad = admin.post("/v1/keys", json={"collections": ["no spaces"]})
    assert bad.status_code == 422


# ---- item 7: a NUL in a path is a 422, and the connection stays usable -------------------------------------


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send one request on an open connection; read exactly its response (status, body)."""
    sock.sendall(request)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return int(lines[0].split()[1]), body


def _request(server: RunningServer, method: str, path: str, body: Any = None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(server.base_url).netloc}\r\nX-API-Key: {ADMIN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def test_a_nul_in_a_folder_path_is_422_and_the_connection_lives_on(server: RunningServer) -> None:
    root = server.settings.api.allowed_roots[0]
    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:  # one keep-alive connection
        for path in (f"{root}/pics\x00/etc", f"{root}/\x00"):
            bad = _request(server, "POST", "/v1/collections/x/folders", {"path": path})
            status, body = _exchange(sock, bad)
            assert status == 422, body
            assert "NUL" in json.loads(body)["message"]
            status, body = _exchange(sock, _request(server, "GET", "/v1/collections"))
            assert status == 200, body  # same socket: the bad request did not cost the connection


# ---- item 10: no reason or error shows where the server keeps its files ------------------------------------


def test_failure_reasons_show_no_server_paths(server: RunningServer, admin: httpx.Client) -> None:
    data_dir = Path(server.settings.data_dir)
    forms = {str(data_dir), str(data_dir.resolve())}
    job = ingest(admin, "damaged", [("broken.pdf", b"%PDF-1.4\n"), ("ok.jpg", photo_bytes("coins"))])
    reason = job["by_name"]["broken.pdf"]["reason"]
    assert job["by_name"]["broken.pdf"]["status"] == "failed" and "broken.pdf" in reason
    listed = admin.get("/v1/collections/damaged/documents", params={"status": "failed"}).json()
    (failed,) = listed["documents"]
    assert failed["error"] and failed["path"].startswith("uploads/damaged/")
    unreadable = image_query(admin, "damaged", b"GIF89a" + b"\0" * 64)
    for text in (json.dumps(job), json.dumps(failed), unreadable.text):
        assert not any(form in text for form in forms), text


# ---- making keys ------------------------------------------------------------------------------------------


def _printed(output: str, label: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith(label + ":"))


def test_mmrag_key_prints_a_key_its_digest_and_a_setting_that_works(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mmrag.cli import app
    from mmrag.errors import ConfigError
    from mmrag.settings import load_settings

    result = CliRunner().invoke(app, ["key", "--collection", "photos", "--collection", "docs"])
    assert result.exit_code == 0, result.output
    key, digest = _printed(result.output, "key"), _printed(result.output, "sha256")
    assert hash_api_key(key) == digest
    setting = next(line.strip() for line in result.output.splitlines() if "MMRAG_API__KEYS=" in line)
    monkeypatch.setenv("MMRAG_API__KEYS", setting.split("=", 1)[1].strip("'"))
    (configured,) = load_settings().api.keys
    assert (configured.sha256, configured.collections, configured.admin) == (
        digest,
        ["photos", "docs"],
        False,
    )

    refused = CliRunner().invoke(app, ["key", "--collection", "no/slashes"])
    assert refused.exit_code == 2 and "is not a collection name" in refused.output
    with pytest.raises(ConfigError, match="sha256 hex digests"):
        load_settings(api={"keys": [{"sha256": key, "collections": ["photos"]}]})  # the key, not its digest
    with pytest.raises(ConfigError, match="collections"):
        load_settings(api={"keys": [{"sha256": digest}]})  # a key must say what it may reach


def test_the_module_entry_point_prints_a_key_without_warnings() -> None:
    """Issue #15: `python -m mmrag.api.security` warned that runpy found the module already imported."""
    run = subprocess.run(
        [sys.executable, "-W", "error", "-m", "mmrag.api.security"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert hash_api_key(_printed(run.stdout, "key")) == _printed(run.stdout, "sha256")
