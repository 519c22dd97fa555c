"""Captions from any OpenAI-compatible VLM server (vLLM, Ollama, llama.cpp, LM Studio, OpenAI)."""

from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from PIL import Image

from mmrag.caption.base import CAPTION_PROMPT, CaptionResult
from mmrag.errors import MmragError
from mmrag.vlm.openai_client import OpenAICompatClient, user_message

logger = logging.getLogger(__name__)

_NOUN = r"(?:image|picture|photo(?:graph)?|screenshot|scan|illustration)"
_VERB = r"(?:shows|depicts|features|displays|contains|presents|captures|illustrates|is\s+of)"
# Openers that tell a searcher nothing: "This image shows ...", "In the picture, ...", "Caption: ...".
_BOILERPLATE = re.compile(
    rf"^(?:(?:caption|description)\s*:\s*)?"
    rf"(?:in\s+(?:this|the)\s+{_NOUN}\s*,?\s*|(?:this|the)\s+{_NOUN}\s+{_VERB}\s*:?\s*)?",
    re.IGNORECASE,
)
# Reasoning models served without a reasoning parser put their thinking into the content.
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_WRAPPING = " \t\r\n\"'*`"


class OpenAICaptioner:
    """Meets mmrag.caption.base.Captioner; one request per image, at most client.max_concurrency at a time."""

    def __init__(
        self,
        client: OpenAICompatClient,
        prompt: str = CAPTION_PROMPT,
        max_tokens: int = 120,
        *,
        temperature: float | None = 0.0,
        max_side: int = 1024,
    ) -> None:
        self.client = client
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_side = max_side
        parts = urlsplit(client.base_url)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        prompt_hash = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        # A new prompt must give a new id, so cached captions made with the old prompt are redone.
        self.captioner_id = f"openai:{client.model}@{host}#{prompt_hash}"

    def caption(self, images: list[Image.Image]) -> list[CaptionResult]:
        if not images:
            return []
        if len(images) == 1:
            results = [self._caption_one(images[0])]
        else:
            workers = min(self.client.max_concurrency, len(images))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmrag-caption") as pool:
                results = list(pool.map(self._caption_one, images))
        failed = [r.error for r in results if r.error]
        if failed:
            logger.warning("%d of %d captions failed; first error: %s", len(failed), len(results), failed[0])
        return results

    def _caption_one(self, image: Image.Image) -> CaptionResult:
        try:
            message = user_message(self.prompt, [image], max_side=self.max_side)
            reply = self.client.chat([message], max_tokens=self.max_tokens, temperature=self.temperature)
        except MmragError as exc:
            return CaptionResult(error=str(exc))
        text = clean_caption(reply)
        if not text:
            return CaptionResult(
                error=f"{self.client.backend_label} returned no caption text: {reply[:200]!r}"
            )
        return CaptionResult(text=text)


def clean_caption(reply: str) -> str:
    """One line of caption text: no thinking, no wrapping quotes/markdown, no "This image shows" opener."""
    text = " ".join(_THINKING.sub(" ", reply).split()).strip(_WRAPPING)
    match = _BOILERPLATE.match(text)
    if match and match.end() > 0:
        rest = text[match.end() :].strip(_WRAPPING)
        if rest:
            text = rest[0].upper() + rest[1:]
    return text
