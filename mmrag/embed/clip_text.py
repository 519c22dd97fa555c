"""CLIP's text tower on a query's real tokens instead of the padded context (77 tokens for CLIP).

In a tower with a causal attention mask, a token only sees the tokens before it, and the pooled token (the
end-of-text token, "argmax" pooling) comes before the padding: the padding cannot change the output, and a
short query costs a fraction of a 77-token run. A tower without that mask (SigLIP attends both ways and
pools the last position, which is padding) gives another vector on fewer tokens. So the shortened run is
used only after it has matched the padded run of the real model, on probe texts, at load; otherwise every
text runs padded, as open_clip runs it.

The shortened forward repeats open_clip's `encode_text` with the positional embedding and the mask cut to
the batch's longest real sequence; the check at load is what guards it against a future open_clip whose
`encode_text` differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Texts of different lengths (and one past the context) that the shortened run must reproduce.
PROBE_TEXTS = (
    "a",
    "a photo of a cat asleep on a red sofa",
    "the quick brown fox jumps over the lazy dog " * 12,
)
_PAD_TOKEN = 0  # open_clip's tokenizers pad with 0 after the end-of-text token


@dataclass(frozen=True)
class TextTower:
    """The parts of an open_clip text tower that `encode_text` uses."""

    token_embedding: Any
    positional_embedding: Any
    attn_mask: Any
    transformer: Any
    ln_final: Any
    text_projection: Any
    pool_type: str
    eos_id: int | None


def text_tower(model: Any) -> TextTower | None:
    """The text tower of an open_clip CLIP (attributes on the model) or CustomTextCLIP (`model.text`, a
    TextTransformer); None for towers this module cannot run shortened (HF text encoders, CoCa's class
    token, padding masks)."""
    text = getattr(model, "text", None)
    if text is not None:
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            return None
        source, pool_type, eos_id = text, getattr(text, "pool_type", None), getattr(text, "eos_id", None)
    else:
        source, pool_type = model, getattr(model, "text_pool_type", None)
        eos_id = getattr(model, "text_eos_id", None)
    names = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if pool_type is None or not all(hasattr(source, name) for name in names):
        return None
    return TextTower(
        token_embedding=source.token_embedding,
        positional_embedding=source.positional_embedding,
        attn_mask=getattr(source, "attn_mask", None),
        transformer=source.transformer,
        ln_final=source.ln_final,
        text_projection=getattr(source, "text_projection", None),
        pool_type=str(pool_type),
        eos_id=eos_id,
    )


def real_length(tokens: Any) -> int:
    """Positions up to the last non-padding token of any row (at least 1)."""
    used = (tokens != _PAD_TOKEN).any(dim=0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


def encode_trimmed(tower: TextTower, tokens: Any) -> Any:
    """open_clip's encode_text on tokens[:, :L], L the batch's real length (unnormalised features)."""
    import torch
    from open_clip.transformer import text_global_pool

    length = real_length(tokens)
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
    x = tower.transformer(x, attn_mask=mask)
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection


def trimmed_matches_padded(model: Any, tokenizer: Any, device: str, tolerance: float) -> tuple[bool, str]:
    """Whether the shortened run gives the padded run's vectors (normalised, within `tolerance` per
    coordinate) on the probe texts, one at a time and as a batch; with the reason when not."""
    import torch
    import torch.nn.functional as F

    tower = text_tower(model)
    if tower is None:
        return (
            False,
            f"{type(model).__name__}'s text tower is not an open_clip transformer this code can shorten",
        )
    try:
        with torch.inference_mode():
            for texts in [[text] for text in PROBE_TEXTS] + [list(PROBE_TEXTS[:2])]:
                tokens = tokenizer(texts).to(device)
                padded = F.normalize(model.encode_text(tokens).float(), dim=-1)
                trimmed = F.normalize(encode_trimmed(tower, tokens).float(), dim=-1)
                difference = float((padded - trimmed).abs().max())
                if padded.shape != trimmed.shape or not difference <= tolerance:
                    return (
                        False,
                        f"shortened run differs from the padded one by {difference:.2e} on {texts[0]!r}",
                    )
    except Exception as exc:  # an open_clip whose internals moved: pad, as open_clip does
        return False, f"shortened run failed: {type(exc).__name__}: {exc}"
    return True, "matches the padded run"
