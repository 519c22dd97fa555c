"""Clients for vision-language model servers, shared by captioning and answer generation."""

from __future__ import annotations

from mmrag.vlm.images import image_to_data_url
from mmrag.vlm.openai_client import BackendError, OpenAICompatClient, system_message, user_message

__all__ = ["BackendError", "OpenAICompatClient", "image_to_data_url", "system_message", "user_message"]
