"""Build the captioner and OCR engine the settings ask for. Heavy imports happen only for the chosen one."""

from __future__ import annotations

from mmrag.caption.base import CAPTION_PROMPT, Captioner, OcrEngine
from mmrag.settings import Settings


def build_captioner(settings: Settings) -> Captioner | None:
    cfg = settings.caption
    prompt = cfg.prompt or CAPTION_PROMPT
    if cfg.backend == "none":
        return None
    if cfg.backend == "efficientnet":
        from mmrag.caption.efficientnet import EfficientNetLabeler

        return EfficientNetLabeler()
    if cfg.backend == "openai":
        from mmrag.caption.openai_captioner import OpenAICaptioner
        from mmrag.vlm.openai_client import client_from_settings

        client = client_from_settings(cfg, max_concurrency=cfg.max_concurrency)
        return OpenAICaptioner(client, prompt=prompt, max_tokens=cfg.max_tokens)
    from mmrag.caption.transformers_captioner import TransformersCaptioner
    from mmrag.vlm.transformers_vlm import TransformersVLM

    vlm = TransformersVLM(
        cfg.model,
        device=settings.models.device,
        max_new_tokens=cfg.max_tokens,
        cache_dir=settings.models.cache_dir,
    )
    return TransformersCaptioner(vlm, prompt=prompt, batch_size=cfg.batch_size)


def build_ocr(settings: Settings) -> OcrEngine | None:
    if not settings.caption.ocr:
        return None
    from mmrag.caption.ocr import RapidOcrEngine

    return RapidOcrEngine(min_score=settings.caption.ocr_min_score)
