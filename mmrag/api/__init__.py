"""The REST service: `create_app(settings)` builds the FastAPI application that `mmrag serve` runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmrag.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m mmrag.api.security` runs without importing (and runpy warning
    # about) the modules of the app.
    if name == "create_app":
        from mmrag.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
