"""The web page: `/` and its static files (mmrag/api/static/), served without an API key.

The page is plain HTML, CSS and JavaScript modules (no build step). It talks to the server only through the
public /v1 API, sending the user's key in the X-API-Key header (kept in the tab's sessionStorage, never in
a URL), so it can do nothing a curl user could not. The headers below keep the page to its own origin:
retrieved text, file names and OCR output are shown as text, never run as script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/ui"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class _PageFiles(StaticFiles):
    """StaticFiles with the page's security headers, revalidated on every load (no stale script after an
    upgrade: the ETag makes an unchanged file a 304)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_web_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under /ui/ (neither is part of the API schema)."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    app.mount(STATIC_PREFIX, _PageFiles(directory=STATIC_DIR), name="web")
