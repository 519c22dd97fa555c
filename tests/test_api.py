"""The REST service end to end, over real HTTP on loopback: upload -> job -> query -> ask -> delete for an
image, a PDF and a Markdown file; collections; API keys; bad requests; readiness; metrics."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

from mmrag.api.security import hash_api_key, new_api_key
from tests.api_server import (
    RunningServer,
    api_settings,
    image_query,
    ingest,
    serve,
    sse_events,
    upload,
)
from tests.realdata import PHOTO_DESCRIPTIONS, photo_bytes, photo_rect, write_markdown, write_pdf_with_photos

if TYPE_CHECKING:
    from conftest_openai import StubServer

pytest_plugins = ["conftest_openai"]

KEY, KEY_HASH = new_api_key()
ANSWER = "Chelsea the cat is asleep [1]."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, openai_stub: StubServer) -> Iterator[RunningServer]:
    generate = {
        "backend": "openai",
        "base_url": openai_stub.base_url,
        "model": f"reply:{ANSWER}",
        "max_images": 1,
        "max_retries": 0,
    }
    settings = api_settings(tmp_path_factory.mktemp("api") / "data", key_hashes=[KEY_HASH], generate=generate)
    with serve(settings) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(KEY) as c:
        yield c


def _top(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits, "no hits"
    return hits[0]  # type: ignore[no-any-return]


def _ask_and_check(client: httpx.Client, collection: str, question: str, item_id: int, gate: str) -> None:
    """JSON and streamed answers: the stub's reply, with its citation of a source we retrieved, as the
    quality gate judges it: `passed`; `fallback`, replaced by sentences from the sources (the streamed
    tokens are still the reply's); or `kept`, failed, but no source given to the model holds text."""
    response = client.post(f"/v1/collections/{collection}/ask", json={"question": question, "k": 3})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["error"] is None, answer["error"]
    numbers = [s["number"] for s in answer["sources"]]
    if gate == "fallback":
        assert answer["fallback"] == "extractive" and answer["rejected_answer"] == ANSWER
        assert any("failed the quality check" in w for w in answer["warnings"])
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer["answer"])]
        assert cited and set(cited) <= set(numbers) and set(answer["cited"]) == set(cited)
        assert {s["number"] for s in answer["sources"] if s["cited"]} == set(cited)
    else:
        assert answer["answer"] == ANSWER and answer["fallback"] is None and answer["rejected_answer"] is None
        assert answer["cited"] == [1]
        assert answer["sources"][0]["number"] == 1 and answer["sources"][0]["cited"]
    assert bool(answer["quality_issues"]) is (gate != "passed"), answer["quality_issues"]
    if gate == "kept":
        assert any("no source holds text to show instead" in w for w in answer["warnings"])
    retrieved = {s["item_id"] for s in answer["sources"] + answer["left_out"]}
    assert item_id in retrieved

    streamed = client.post(
        f"/v1/collections/{collection}/ask", json={"question": question, "k": 3, "stream": True}
    )
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and "token" in names
    assert item_id in {s["item_id"] for s in events[0][1]}
    tokens = "".join(data["text"] for name, data in events if name == "token")
    assert tokens == ANSWER  # the stub streams one word per chunk; the pieces rebuild the reply
    done = events[-1][1]
    for field in ("answer", "cited", "fallback", "quality_issues", "rejected_answer"):
        assert done[field] == answer[field], field


def _delete_and_check(
    client: httpx.Client, server: RunningServer, collection: str, document_id: int, item_id: int
) -> None:
    stored = [
        Path(server.settings.data_dir) / d["path"]
        for d in client.get(f"/v1/collections/{collection}/documents").json()["documents"]
        if d["id"] == document_id
    ]
    assert len(stored) == 1 and stored[0].is_file()
    response = client.delete(f"/v1/collections/{collection}/documents/{document_id}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": document_id, "collection": collection, "deleted": True}
    listed = client.get(f"/v1/collections/{collection}/documents").json()
    assert document_id not in {d["id"] for d in listed["documents"]}
    assert client.get(f"/v1/items/{item_id}").status_code == 404
    assert not stored[0].exists()  # the uploaded file went with its document
    again = client.delete(f"/v1/collections/{collection}/documents/{document_id}")
    assert again.status_code == 404 and again.json()["error"] == "not_found"


def test_image_upload_job_query_ask_delete(client: httpx.Client, server: RunningServer) -> None:
    collection = "photos"
    jpeg = photo_bytes("chelsea")
    job = ingest(
        client,
        collection,
        [("chelsea.jpg", jpeg), ("rocket.png", photo_bytes("rocket", "png"))],
        options={"metadata": {"album": "pets", "year": 2024}},
    )
    assert job["status"] == "done" and job["counts"] == {"indexed": 2, "items": 2}
    document_id = job["by_name"]["chelsea.jpg"]["document_id"]

    hit = _top(image_query(client, collection, jpeg))
    assert hit["document_id"] == document_id
    assert hit["modality"] == "image"
    assert hit["scores"]["clip:image>image"] > 0.99  # the same picture: cosine 1 up to float error
    assert hit["metadata"] == {"album": "pets", "year": 2024}
    assert hit["path"].startswith(f"uploads/{collection}/") and hit["path"].endswith("/chelsea.jpg")

    # the same query as a multipart upload
    form = client.post(
        f"/v1/collections/{collection}/query", files={"image": ("q.jpg", jpeg)}, data={"k": "2"}
    )
    assert _top(form)["item_id"] == hit["item_id"]

    item = client.get(f"/v1/items/{hit['item_id']}").json()
    assert item["collection"] == collection and item["document_id"] == document_id
    assert item["document_metadata"]["album"] == "pets"
    thumbnail = client.get(hit["image_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"].startswith("image/")
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= server.settings.ingest.thumbnail_size
    original = client.get(hit["image_url"], params={"variant": "original"})
    assert original.status_code == 200 and original.content == jpeg
    assert original.headers["content-type"] == "image/jpeg"

    # Photos carry no text here (CLIP road) and one image slot goes to the best ranked, which the tiny random
    # CLIP does not make the cat: the reply's "Chelsea ... asleep" is in no source the model was given, and
    # no source has text to answer with instead.
    _ask_and_check(client, collection, "What is the cat doing?", hit["item_id"], "kept")
    _delete_and_check(client, server, collection, document_id, hit["item_id"])
    after = image_query(client, collection, jpeg).json()["hits"]
    assert hit["item_id"] not in {h["item_id"] for h in after}


def test_pdf_upload_job_query_ask_delete(client: httpx.Client, server: RunningServer, tmp_path: Path) -> None:
    collection = "pdfs"
    pdf = tmp_path / "launch.pdf"
    write_pdf_with_photos(pdf, [["rocket", "coffee"]], text=[PHOTO_DESCRIPTIONS["rocket"]])
    job = ingest(client, collection, [(pdf.name, pdf.read_bytes())])
    assert job["status"] == "done", job
    entry = job["by_name"]["launch.pdf"]
    assert entry["status"] == "indexed" and entry["items"] >= 3  # text chunk(s) and the two photos

    hit = _top(image_query(client, collection, photo_bytes("rocket"), k=3))
    assert hit["document_id"] == entry["document_id"]
    assert hit["modality"] == "image" and hit["page"] == 1
    assert hit["bbox"] == pytest.approx(photo_rect(0), abs=1.0)
    region = client.get(hit["image_url"], params={"variant": "original"})
    assert region.status_code == 200 and region.headers["content-type"] == "image/png"
    width, height = Image.open(io.BytesIO(region.content)).size
    x0, y0, x1, y1 = photo_rect(0)
    assert width / height == pytest.approx((x1 - x0) / (y1 - y0), rel=0.05)  # the photo's region of the page

    texts = client.post(
        f"/v1/collections/{collection}/query", json={"text": "Falcon 9", "filters": {"modality": ["text"]}}
    )
    chunk = _top(texts)
    assert chunk["modality"] == "text" and chunk["page"] == 1 and chunk["image_url"] is None

    # The canned reply is about a cat: nothing in the launch report says so.
    _ask_and_check(client, collection, "What launched?", hit["item_id"], "fallback")
    _delete_and_check(client, server, collection, entry["document_id"], hit["item_id"])


def test_the_pdf_page_of_an_item_with_where_the_item_is(client: httpx.Client, tmp_path: Path) -> None:
    """GET /v1/items/{id}/page: the whole page as PNG, its size and the item's box in points, on the page as
    shown (a turned page included)."""
    import numpy as np
    import pymupdf

    collection = "pages"
    flat = tmp_path / "flat.pdf"
    write_pdf_with_photos(flat, [["rocket", "coffee"], ["chelsea"]])
    turned = tmp_path / "turned.pdf"
    with pymupdf.open(flat) as doc:
        doc[1].set_rotation(90)  # shown a quarter turn clockwise
        doc.save(turned)
    job = ingest(
        client, collection, [(turned.name, turned.read_bytes()), ("cat.jpg", photo_bytes("chelsea"))]
    )
    pdf_id = job["by_name"]["turned.pdf"]["document_id"]

    def page_of(photo: str) -> tuple[httpx.Response, Image.Image, list[float]]:
        only_pdf = {"document_ids": [pdf_id], "modality": ["image"]}
        hit = _top(image_query(client, collection, photo_bytes(photo), k=1, filters=only_pdf))
        response = client.get(f"/v1/items/{hit['item_id']}/page")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        box = [float(v) for v in response.headers["x-item-box"].split(",")]
        return response, Image.open(io.BytesIO(response.content)).convert("RGB"), box

    def difference(shown: Image.Image, box: list[float], scale: float, expected: Image.Image) -> float:
        crop = shown.crop(tuple(round(v * scale) for v in box)).resize((48, 48))
        return float(np.abs(np.asarray(crop, float) - np.asarray(expected.resize((48, 48)), float)).mean())

    response, shown, box = page_of("rocket")  # page 1, upright: the box is the bbox the item has
    assert (response.headers["x-page-width"], response.headers["x-page-height"]) == ("595", "842")
    assert box == pytest.approx(photo_rect(0), abs=0.5)
    scale = shown.width / 595
    assert shown.height == pytest.approx(842 * scale, abs=1)
    rocket, coffee = (
        Image.open(io.BytesIO(photo_bytes("rocket"))),
        Image.open(io.BytesIO(photo_bytes("coffee"))),
    )
    assert difference(shown, box, scale, rocket) < 0.5 * difference(shown, box, scale, coffee)

    response, shown, box = page_of("chelsea")  # page 2, turned: the box follows the photo
    assert (response.headers["x-page-width"], response.headers["x-page-height"]) == ("842", "595")
    x0, y0, x1, y1 = photo_rect(0)
    assert box == pytest.approx([842 - y1, x0, 842 - y0, x1], abs=0.5)
    cat = Image.open(io.BytesIO(photo_bytes("chelsea")))
    scale = shown.width / 842
    turned_cat = cat.resize((round(x1 - x0), round(y1 - y0))).transpose(Image.Transpose.ROTATE_270)
    assert difference(shown, box, scale, turned_cat) < 0.5 * difference(shown, box, scale, cat)

    big = client.get(
        f"/v1/items/{_top(image_query(client, collection, photo_bytes('rocket')))['item_id']}/page",
        params={"dpi": 144},
    )
    assert Image.open(io.BytesIO(big.content)).width == 2 * 595
    photo_item = job["by_name"]["cat.jpg"]["document_id"]
    photo_hits = image_query(
        client, collection, photo_bytes("chelsea"), k=1, filters={"document_ids": [photo_item]}
    )
    not_on_a_page = client.get(f"/v1/items/{_top(photo_hits)['item_id']}/page")
    assert not_on_a_page.status_code == 404 and "not on a PDF page" in not_on_a_page.json()["message"]
    assert client.get("/v1/items/1/page", params={"dpi": 5}).status_code == 422


def test_markdown_upload_job_query_ask_delete(
    client: httpx.Client, server: RunningServer, tmp_path: Path
) -> None:
    collection = "notes"
    guide = write_markdown(tmp_path / "guide.md")
    job = ingest(client, collection, [(guide.name, guide.read_bytes())])
    entry = job["by_name"]["guide.md"]
    assert entry["status"] == "indexed" and entry["items"] > 3

    some = client.post(f"/v1/collections/{collection}/query", json={"text": "the coffee cup", "k": 20}).json()
    (found,) = some["hits"]  # a text file counts as one page: its chunks are one hit, the others counted
    assert found["more_on_page"] == entry["items"] - 1 and not found["also_in"] and not found["list_page"]
    chunks = {found["item_id"]: found["text"]}
    # a chunk's own text, as the query, finds that chunk first
    target_id, target_text = sorted(chunks.items())[-1]
    hit = _top(client.post(f"/v1/collections/{collection}/query", json={"text": target_text, "k": 5}))
    assert hit["item_id"] == target_id and hit["scores"]["clip:text>text"] > 0.99
    assert client.get(f"/v1/items/{target_id}/image").status_code == 404  # a text chunk has no picture

    _ask_and_check(client, collection, target_text, target_id, "fallback")
    _delete_and_check(client, server, collection, entry["document_id"], target_id)


def test_collections_are_isolated(client: httpx.Client) -> None:
    cat, rocket = photo_bytes("chelsea"), photo_bytes("rocket")
    a = ingest(client, "iso-a", [("cat.jpg", cat)])["by_name"]["cat.jpg"]
    b = ingest(client, "iso-b", [("rocket.jpg", rocket)])["by_name"]["rocket.jpg"]
    hits_a = image_query(client, "iso-a", rocket, k=10).json()["hits"]
    assert {h["document_id"] for h in hits_a} == {a["document_id"]}  # never b's rocket, even for a rocket
    hits_b = image_query(client, "iso-b", cat, k=10).json()["hits"]
    assert {h["document_id"] for h in hits_b} == {b["document_id"]}
    docs_a = client.get("/v1/collections/iso-a/documents").json()["documents"]
    assert [d["id"] for d in docs_a] == [a["document_id"]]
    # a document of one collection cannot be deleted through another
    assert client.delete(f"/v1/collections/iso-a/documents/{b['document_id']}").status_code == 404
    names = {c["name"] for c in client.get("/v1/collections").json()["collections"]}
    assert {"iso-a", "iso-b", "default"} <= names
    missing = image_query(client, "no-such-collection", cat)
    assert missing.status_code == 404 and "no-such-collection" in missing.json()["message"]


def test_filters_on_metadata_documents_and_modality(client: httpx.Client, tmp_path: Path) -> None:
    collection = "filtered"
    pdf = tmp_path / "figures.pdf"
    write_pdf_with_photos(pdf, [["coffee"]], text=[PHOTO_DESCRIPTIONS["coffee"]])
    ingest(client, collection, [("cat.jpg", photo_bytes("chelsea"))], options={"metadata": {"owner": "ann"}})
    ingest(client, collection, [("coins.jpg", photo_bytes("coins"))], options={"metadata": {"owner": "bob"}})
    pdf_doc = ingest(client, collection, [(pdf.name, pdf.read_bytes())])["by_name"][pdf.name]["document_id"]

    query = photo_bytes("chelsea")
    bob = image_query(client, collection, query, k=10, filters={"metadata": {"owner": "bob"}}).json()["hits"]
    assert bob and {h["metadata"]["owner"] for h in bob} == {"bob"}
    only_pdf = image_query(client, collection, query, k=10, filters={"document_ids": [pdf_doc]}).json()[
        "hits"
    ]
    assert only_pdf and {h["document_id"] for h in only_pdf} == {pdf_doc}
    images = image_query(client, collection, query, k=10, filters={"modality": ["image"]}).json()["hits"]
    assert len(images) == 3 and {h["modality"] for h in images} == {"image"}
    nobody = image_query(client, collection, query, filters={"metadata": {"owner": "eve"}}).json()
    assert nobody["hits"] == []


def test_every_v1_route_wants_a_valid_key(server: RunningServer) -> None:
    routes = [
        ("GET", "/v1/collections"),
        ("GET", "/v1/collections/default/documents"),
        ("POST", "/v1/collections/default/documents"),
        ("POST", "/v1/collections/default/folders"),
        ("DELETE", "/v1/collections/default/documents/1"),
        ("POST", "/v1/collections/default/query"),
        ("POST", "/v1/collections/default/ask"),
        ("GET", "/v1/jobs/" + "0" * 32),
        ("GET", "/v1/items/1"),
        ("GET", "/v1/items/1/image"),
        ("GET", "/v1/items/1/page"),
        ("POST", "/v1/keys"),
        ("GET", "/v1/keys"),
        ("DELETE", "/v1/keys/" + "0" * 32),
    ]
    documented = {
        (method.upper(), path)
        for path, methods in server.app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in methods
    }
    assert len(documented) == len(routes)  # a new route must be added here
    for key in (None, "wrong-key", KEY[:-1]):
        with server.client(key) as anonymous:
            for method, path in routes:
                response = anonymous.request(method, path, json={"text": "x"})
                assert response.status_code == 401, (method, path, response.text)
                assert response.json()["error"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}) as bearer:
        assert bearer.get("/v1/collections").status_code == 200
    with server.client() as anonymous:  # probes, the scraper and the web page need no key
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/ready").json()["ready"] is True
        assert anonymous.get("/metrics").status_code == 200
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]  # retrieved text never runs
        script = anonymous.get("/ui/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]


def test_corrupt_files_are_reported_in_the_job(client: httpx.Client) -> None:
    truncated = photo_bytes("coffee")[:4000]
    broken_pdf = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
    job = ingest(
        client,
        "corrupt",
        [("coffee.jpg", truncated), ("broken.pdf", broken_pdf), ("good.jpg", photo_bytes("camera"))],
    )
    assert job["status"] == "done"
    assert job["counts"]["failed"] == 2 and job["counts"]["indexed"] == 1
    assert "truncated" in job["by_name"]["coffee.jpg"]["reason"]
    assert "broken.pdf" in job["by_name"]["broken.pdf"]["reason"]
    assert job["by_name"]["good.jpg"]["status"] == "indexed"
    failed = client.get("/v1/collections/corrupt/documents", params={"status": "failed"}).json()
    assert {d["name"] for d in failed["documents"]} == {"coffee.jpg", "broken.pdf"}


def test_client_file_names_never_become_paths(client: httpx.Client, server: RunningServer) -> None:
    job = ingest(client, "names", [("../../../escape.md", b"# Escape\n\nA text that tried to escape.\n")])
    (entry,) = job["files"]
    assert entry["name"] == "escape.md" and entry["status"] == "indexed"
    data_dir = Path(server.settings.data_dir)
    assert not (data_dir.parent / "escape.md").exists() and not (data_dir / "escape.md").exists()
    (stored,) = (data_dir / "uploads" / "names").glob("*/escape.md")
    assert stored.read_bytes().startswith(b"# Escape")
    hidden = ingest(client, "names", [(".hidden.md", b"# Hidden\n\nstill indexed\n")])
    assert hidden["files"][0]["name"] == "hidden.md" and hidden["files"][0]["status"] == "indexed"


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) >= {"error", "message"} and body["message"]
    return str(body["message"])


def test_bad_requests_get_4xx_json_naming_the_problem(client: httpx.Client) -> None:
    q = "/v1/collections/default/query"
    assert "not an image, a PDF or a text file" in _error(
        upload(client, "default", [("x.bin", b"\0" * 64)]), 415
    )
    assert "'files'" in _error(
        client.post("/v1/collections/default/documents", files={"other": ("a", b"a")}), 422
    )
    assert "no files" in _error(
        client.post("/v1/collections/default/documents", files={"options": (None, "{}")}), 422
    )
    assert "multipart" in _error(client.post("/v1/collections/default/documents", json={}), 415)
    bad_options = upload(client, "default", [("a.md", b"# a\n")], options={"road": "sideways"})
    assert "road" in _error(bad_options, 422)
    assert "options" in _error(
        client.post(
            "/v1/collections/default/documents",
            files={"files": ("a.md", b"# a\n")},
            data={"options": "{not json"},
        ),
        422,
    )
    assert "text, an image, or both" in _error(client.post(q, json={"k": 3}), 422)
    assert "k" in _error(client.post(q, json={"text": "x", "k": 0}), 422)
    assert "base64" in _error(client.post(q, json={"image_base64": "%%%"}), 422)
    not_an_image = base64.b64encode(b"hello, not pixels").decode()
    assert "not an image" in _error(client.post(q, json={"image_base64": not_an_image}), 415)  # as uploads
    truncated = base64.b64encode(photo_bytes("coffee")[:4000]).decode()
    assert "truncated" in _error(client.post(q, json={"image_base64": truncated}), 422)
    assert "'stream' must be true or false" in _error(
        client.post("/v1/collections/default/ask", files={"question": (None, "x"), "stream": (None, "yes")}),
        422,
    )
    assert "integer" in _error(client.post(q, json={"text": "x", "k": True}), 422)  # true is not 1
    assert "empty body" in _error(
        client.post(q, content=b"", headers={"content-type": "application/json"}), 422
    )
    assert "JSON" in _error(client.post(q, content=b"{", headers={"content-type": "application/json"}), 422)
    assert "text/plain" in _error(client.post(q, content=b"x", headers={"content-type": "text/plain"}), 415)
    assert "collection" in _error(client.post("/v1/collections/..%20x/query", json={"text": "x"}), 422)
    assert _error(client.get("/v1/jobs/nope"), 422)
    assert "no job" in _error(client.get("/v1/jobs/" + "f" * 32), 404)
    assert "no item" in _error(client.get("/v1/items/999999999"), 404)
    assert _error(client.get("/v1/items/0"), 422)
    assert _error(client.get("/v1/nowhere"), 404)
    assert _error(client.put("/v1/collections"), 405)
    assert "folder ingest is off" in _error(
        client.post("/v1/collections/default/folders", json={"path": "/etc"}), 403
    )


def test_too_many_files_is_413(client: httpx.Client, server: RunningServer) -> None:
    limit = server.settings.api.max_files_per_request
    files = [(f"{i}.md", f"# note {i}\n".encode()) for i in range(limit + 1)]
    assert "max_files_per_request" in _error(upload(client, "default", files), 413)
    assert not list((Path(server.settings.data_dir) / "uploads" / ".incoming").glob("*"))  # cleaned up


def test_metrics_cover_requests_stages_and_the_ingest_queue(client: httpx.Client) -> None:
    ingest(client, "metrics", [("coins.jpg", photo_bytes("coins"))])
    assert image_query(client, "metrics", photo_bytes("coins")).status_code == 200
    assert client.post("/v1/collections/metrics/ask", json={"question": "coins?"}).status_code == 200
    text = client.get("/metrics").text
    for stage in ("decode", "embed", "search", "fuse"):
        assert f'mmrag_stage_duration_seconds_count{{operation="query",stage="{stage}"}}' in text, stage
    assert 'mmrag_stage_duration_seconds_count{operation="ask",stage="generate"}' in text
    assert 'mmrag_stage_duration_seconds_count{operation="ingest",stage="embed"}' in text
    assert "mmrag_ingest_queue_depth 0.0" in text
    assert 'route="/v1/collections/{collection}/query",status="200"' in text
    assert 'mmrag_ingest_jobs_total{status="done"}' in text


def test_ready_is_503_and_v1_refuses_while_the_service_cannot_load(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "data")
    broken = settings.model_copy(
        update={
            "models": settings.models.model_copy(
                update={"clip": f"open_clip:mmrag-test-tiny/{tmp_path}/none.pt"}
            )
        }
    )
    with serve(broken, wait_ready=False) as running, running.client() as anonymous:
        assert anonymous.get("/health").status_code == 200
        for _ in range(600):
            ready = anonymous.get("/ready")
            if ready.json()["detail"] != "loading models and indexes":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and "none.pt" in ready.json()["detail"]
        refused = anonymous.post("/v1/collections/default/query", json={"text": "x"})
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
        assert refused.headers["retry-after"] == "5"


def test_api_key_hashes_must_be_hashes() -> None:
    from mmrag.errors import ConfigError
    from mmrag.settings import load_settings

    with pytest.raises(ConfigError, match="sha256 hex digests"):
        load_settings(api={"api_key_hashes": ["my-secret-key"]})
    assert load_settings(
        api={"api_key_hashes": ["SHA256:" + hash_api_key("k").upper()]}
    ).api.api_key_hashes == [hash_api_key("k")]
