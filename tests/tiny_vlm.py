"""Tiny random vision-language models, saved like hub checkpoints, for wiring tests without a model hub.

Each builder writes a directory that `AutoProcessor.from_pretrained` + `AutoModelForImageTextToText
.from_pretrained` load exactly as they load a real checkpoint: config.json, model.safetensors,
generation_config.json, tokenizer.json/tokenizer_config.json, the image (and video) processor config and the
family's real chat template. The weights are random, so the text they produce is gibberish; what is real is
the code path: prompt format, placeholder expansion, vision tower, merging of image features, generation.

Sizes are chosen so one family builds, saves and loads in well under a second on a CPU: 2 text layers
32-64 wide, 1-2 vision layers, images resized to a few hundred pixels by the family's own image processor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessor,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

# The chat templates below are the families' published ones, copied verbatim, so the prompt the tiny model
# sees has the real layout (role markers, image placeholders, generation prompt).

# Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct (chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# HuggingFaceTB/SmolVLM-*-Instruct, as shipped in transformers' SmolVLM processor (DEFAULT_CHAT_TEMPLATE).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}"
)

# HuggingFaceM4/Idefics3-8B-Llama3 (chat_template.json).
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# llava-hf/llava-1.5-7b-hf (chat_template.json).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# zai-org/GLM-4.1V-9B-Thinking (chat_template.jinja).
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n"
    "{{ msg.content }}\n    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        "
    "{%- if msg.content is string %}\n{{ msg.content }}\n        {%- else %}\n            "
    "{%- for item in msg.content %}\n                "
    "{%- if item.type == 'video' or 'video' in item %}\n"
    "<|begin_of_video|><|video|><|end_of_video|>\n                "
    "{%- elif item.type == 'image' or 'image' in item %}\n"
    "<|begin_of_image|><|image|><|end_of_image|>\n                "
    "{%- elif item.type == 'text' %}\n{{ item.text }}\n                {%- endif %}\n            "
    "{%- endfor %}\n        {%- endif %}\n    {%- elif msg.role == 'assistant' %}\n        "
    "{%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n{{ msg.content }}\n        "
    "{%- else %}\n<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n    {%- endif %}\n"
    "{%- endfor %}\n{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Words the BPE merges are learnt from: the prompts the tests send, so they tokenize into a few pieces.
_TOKENIZER_CORPUS = (
    "Describe this image for a search index in one or two sentences. Name the main objects, people, "
    "animals, any visible text, the setting and the kind of image (photo, chart, diagram, scan, screenshot). "
    "Do not speculate.",
    "You are a helpful assistant. What is shown in this picture? Answer the question using the context.",
    "a photo of an astronaut, a cat, a rocket on a launch pad, a cup of coffee, a man with a camera",
)

# SmolVLM and Idefics3 name each tile of a split image with one of these tokens (up to 6 x 6 tiles).
_ROW_COL_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))


def build_tokenizer(
    special_tokens: Iterable[str],
    *,
    eos_token: str,
    pad_token: str,
    bos_token: str | None = None,
    prepend_bos: bool = False,
    chat_template: str,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (the scheme Qwen, SmolLM and Llama-3 use) learnt from a few sentences.

    Byte-level means every string encodes, so gibberish generated by random weights always decodes.
    """
    specials = list(dict.fromkeys(special_tokens))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + 256 + 120,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    if prepend_bos:
        # llava-1.5's Llama tokenizer puts <s> in front of every prompt; its chat template relies on that.
        assert bos_token is not None
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, backend.token_to_id(bos_token))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        chat_template=chat_template,
    )


def _token_ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    assert all(isinstance(i, int) and i != tokenizer.unk_token_id for i in ids), (tokens, ids)
    return ids


def _save(
    model: PreTrainedModel, processor: ProcessorMixin, out_dir: Path, eos_token: str, pad_token: str
) -> Path:
    tokenizer = processor.tokenizer
    eos_id, pad_id = _token_ids(tokenizer, eos_token, pad_token)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _tiny_llama(
    vocab_size: int, bos_id: int | None, eos_id: int, pad_id: int, hidden_size: int = 32
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    return build_tokenizer(
        specials, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN2_VL_CHAT_TEMPLATE
    )


def _qwen_processors() -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    # Real Qwen2-VL patches (14 px, 2x2 merge) but few of them: 4 to 16 merged image tokens per image.
    pixel_range = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}
    return Qwen2VLImageProcessor(**pixel_range), Qwen2VLVideoProcessor(**pixel_range)


def build_qwen2_vl(out_dir: Path) -> Path:
    tokenizer = _qwen_tokenizer()
    image_processor, video_processor = _qwen_processors()
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    pad_id, eos_id, image_id, video_id, start_id, end_id = _token_ids(
        tokenizer,
        "<|endoftext|>",
        "<|im_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # head_dim 8 -> 4 rotary frequencies, split over (time, height, width) like the real [16, 24, 24].
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "bos_token_id": pad_id,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=image_id,
        video_token_id=video_id,
        vision_start_token_id=start_id,
        vision_end_token_id=end_id,
    )
    torch.manual_seed(0)
    return _save(Qwen2VLForConditionalGeneration(config), processor, out_dir, "<|im_end|>", "<|endoftext|>")


def build_qwen2_5_vl(out_dir: Path) -> Path:
    tokenizer = _qwen_tokenizer()
    image_processor, video_processor = _qwen_processors()
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    pad_id, eos_id, image_id, video_id, start_id, end_id = _token_ids(
        tokenizer,
        "<|endoftext|>",
        "<|im_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "bos_token_id": pad_id,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            # One windowed block and one full-attention block, as the real tower alternates them.
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=image_id,
        video_token_id=video_id,
        vision_start_token_id=start_id,
        vision_end_token_id=end_id,
    )
    torch.manual_seed(0)
    return _save(
        Qwen2_5_VLForConditionalGeneration(config), processor, out_dir, "<|im_end|>", "<|endoftext|>"
    )


def _idefics_family_tokenizer(chat_template: str, bos_token: str) -> PreTrainedTokenizerFast:
    specials = [bos_token, "<|im_end|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>"]
    specials += ["<global-img>", "<video>", *_ROW_COL_TOKENS]
    return build_tokenizer(
        specials,
        bos_token=bos_token,
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        chat_template=chat_template,
    )


# A 32 px SigLIP-style tower with 8 px patches: 16 patches, pixel-shuffled by 2 -> 4 tokens per tile.
_IDEFICS_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
_IDEFICS_IMAGE_SEQ_LEN = (32 // 8) ** 2 // 2**2
# Images are resized to a longest edge of 64 px and split into 32 px tiles (up to 2 x 2 plus the global view).
_IDEFICS_SIZES = {"size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 32}}


def build_smolvlm(out_dir: Path) -> Path:
    tokenizer = _idefics_family_tokenizer(SMOLVLM_CHAT_TEMPLATE, bos_token="<|im_start|>")
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**_IDEFICS_SIZES),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(**_IDEFICS_SIZES),
        image_seq_len=_IDEFICS_IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    bos_id, eos_id, pad_id, image_id = _token_ids(
        tokenizer, "<|im_start|>", "<end_of_utterance>", "<|im_end|>", "<image>"
    )
    config = SmolVLMConfig(
        vision_config=_IDEFICS_VISION,
        text_config=_tiny_llama(len(tokenizer), bos_id, eos_id, pad_id).to_dict(),
        image_token_id=image_id,
        scale_factor=2,
    )
    torch.manual_seed(0)
    return _save(
        SmolVLMForConditionalGeneration(config), processor, out_dir, "<end_of_utterance>", "<|im_end|>"
    )


def build_idefics3(out_dir: Path) -> Path:
    tokenizer = _idefics_family_tokenizer(IDEFICS3_CHAT_TEMPLATE, bos_token="<|begin_of_text|>")
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**_IDEFICS_SIZES),
        tokenizer=tokenizer,
        image_seq_len=_IDEFICS_IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    bos_id, eos_id, pad_id, image_id = _token_ids(
        tokenizer, "<|begin_of_text|>", "<end_of_utterance>", "<|im_end|>", "<image>"
    )
    config = Idefics3Config(
        vision_config=_IDEFICS_VISION,
        text_config=_tiny_llama(len(tokenizer), bos_id, eos_id, pad_id).to_dict(),
        image_token_id=image_id,
        scale_factor=2,
    )
    torch.manual_seed(0)
    return _save(
        Idefics3ForConditionalGeneration(config), processor, out_dir, "<end_of_utterance>", "<|im_end|>"
    )


def build_llava(out_dir: Path) -> Path:
    tokenizer = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        prepend_bos=True,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    # CLIP ViT at 28 px with 14 px patches: 4 patch tokens + CLS; "default" selection drops CLS -> 4 tokens.
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    bos_id, eos_id, pad_id, image_id = _token_ids(tokenizer, "<s>", "</s>", "<pad>", "<image>")
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=_tiny_llama(len(tokenizer), bos_id, eos_id, pad_id).to_dict(),
        image_token_index=image_id,
        image_seq_length=4,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    return _save(LlavaForConditionalGeneration(config), processor, out_dir, "</s>", "<pad>")


def build_glm4v(out_dir: Path) -> Path:
    specials = [
        "<|endoftext|>",
        "[gMASK]",
        "<sop>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|observation|>",
    ]
    specials += ["<|begin_of_image|>", "<|end_of_image|>", "<|image|>"]
    specials += ["<|begin_of_video|>", "<|end_of_video|>", "<|video|>"]
    tokenizer = build_tokenizer(
        specials, eos_token="<|endoftext|>", pad_token="<|endoftext|>", chat_template=GLM4V_CHAT_TEMPLATE
    )
    # Same patch geometry as GLM-4.1V (14 px, 2x2 merge, 2 frames), few patches.
    sizes = {"size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}}
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(**sizes),
        tokenizer=tokenizer,
        video_processor=Glm4vVideoProcessor(**sizes),
        chat_template=GLM4V_CHAT_TEMPLATE,
    )
    ids = dict(zip(specials, _token_ids(tokenizer, *specials), strict=True))
    # GLM-4.1V stops on <|user|> and <|observation|> too: the model ends its turn by opening the next one.
    stop_ids = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    config = Glm4vConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # head_dim 16, half of it rotary (as in GLM-4.1V) -> 4 frequencies over (time, height, width).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
                "partial_rotary_factor": 0.5,
            },
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": stop_ids,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "image_size": 56,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration(config)
    _save(model, processor, out_dir, "<|endoftext|>", "<|endoftext|>")
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.save_pretrained(out_dir)
    return out_dir


def build_text_only_llama(out_dir: Path) -> Path:
    """A causal language model without a vision tower: what pointing the VLM at the wrong repo gives."""
    tokenizer = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    pad_id, eos_id = _token_ids(tokenizer, "<|endoftext|>", "<|im_end|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_llama(len(tokenizer), None, eos_id, pad_id))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# family name -> builder; the transformers classes each family loads as are listed in the test module.
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "smolvlm": build_smolvlm,
    "idefics3": build_idefics3,
    "llava": build_llava,
    "glm4v": build_glm4v,
}


def build_tiny_vlm(family: str, out_dir: Path) -> Path:
    """Write a tiny random checkpoint of `family` (a key of BUILDERS) to out_dir and return out_dir."""
    return BUILDERS[family](out_dir)
