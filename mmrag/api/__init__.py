"""The REST service: `create_app(settings)` builds the FastAPI application that `mmrag serve` runs."""

from __future__ import annotations

from mmrag.api.app import create_app

__all__ = ["create_app"]
