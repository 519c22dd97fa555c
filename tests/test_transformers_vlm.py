"""TransformersVLM and TransformersCaptioner against tiny random checkpoints of each VLM family.

The checkpoints (tests/tiny_vlm.py) are saved to disk and loaded by the same AutoProcessor /
AutoModelForImageTextToText.from_pretrained path a hub id takes, so these tests check the wiring: prompt
format, image placeholders, batching with left padding, decoding of only the new tokens, streaming, errors.
Random weights write gibberish, so nothing here judges caption quality.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from PIL import Image

from mmrag.caption.base import CAPTION_PROMPT, Captioner
from mmrag.caption.transformers_captioner import TransformersCaptioner
from mmrag.errors import ConfigError, MmragError
from mmrag.vlm.transformers_vlm import TransformersVLM
from tests.realdata import photo_image
from tests.tiny_vlm import build_text_only_llama, build_tiny_vlm

# transformers' Glm4vProcessor calls np.array on a tensor; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

MAX_NEW_TOKENS = 6

# family -> (model class, processor class, image processor class, end of the rendered generation prompt)
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "qwen2_vl": (
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        "Qwen2VLImageProcessor",
        "<|im_start|>assistant\n",
    ),
    "qwen2_5_vl": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        "Qwen2VLImageProcessor",
        "<|im_start|>assistant\n",
    ),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor", "SmolVLMImageProcessor", "Assistant:"),
    "idefics3": (
        "Idefics3ForConditionalGeneration",
        "Idefics3Processor",
        "Idefics3ImageProcessor",
        "Assistant:",
    ),
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessor", "ASSISTANT:"),
    "glm4v": ("Glm4vForConditionalGeneration", "Glm4vProcessor", "Glm4vImageProcessor", "<|assistant|>\n"),
}


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build each family's checkpoint once per module, on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_vlm(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="module")
def loaded_vlm(checkpoint_dir: Callable[[str], Path]) -> Callable[[str], TransformersVLM]:
    """One loaded model per family, shared by the tests (generation does not change it)."""
    loaded: dict[str, TransformersVLM] = {}

    def get(family: str) -> TransformersVLM:
        if family not in loaded:
            vlm = TransformersVLM(str(checkpoint_dir(family)), device="cpu", max_new_tokens=MAX_NEW_TOKENS)
            # Random weights may emit the stop token at once; force a few tokens so decoding is exercised.
            vlm.model.generation_config.min_new_tokens = MAX_NEW_TOKENS
            loaded[family] = vlm
        return loaded[family]

    return get


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    # Three sizes (512x512, 451x300, 640x427) and one greyscale photo.
    return {name: photo_image(name) for name in ("astronaut", "chelsea", "rocket", "camera")}


def _ask(image: Image.Image, question: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_by_path_through_the_auto_classes(
    family: str, loaded_vlm: Callable[[str], TransformersVLM]
) -> None:
    model_class, processor_class, image_processor_class, _ = FAMILIES[family]
    vlm = loaded_vlm(family)
    assert type(vlm.model).__name__ == model_class
    assert type(vlm.processor).__name__ == processor_class
    assert type(vlm.processor.image_processor).__name__ == image_processor_class
    assert str(vlm.device) == "cpu"
    assert not vlm.model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_holds_image_placeholders_the_caption_prompt_and_the_generation_prompt(
    family: str, loaded_vlm: Callable[[str], TransformersVLM], photos: dict[str, Image.Image]
) -> None:
    vlm = loaded_vlm(family)
    captioner = TransformersCaptioner(vlm)
    inputs = vlm.encode([captioner.conversation(photos["astronaut"])])

    input_ids = inputs["input_ids"][0].tolist()
    assert input_ids.count(vlm.processor.image_token_id) > 0
    assert inputs["pixel_values"].numel() > 0
    prompt = vlm.processor.tokenizer.decode(input_ids, skip_special_tokens=False)
    assert CAPTION_PROMPT in prompt
    assert prompt.endswith(FAMILIES[family][3])


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_captions_of_differently_sized_photos(
    family: str, loaded_vlm: Callable[[str], TransformersVLM], photos: dict[str, Image.Image]
) -> None:
    vlm = loaded_vlm(family)
    images = [photos["astronaut"], photos["chelsea"], photos["rocket"]]
    batched = TransformersCaptioner(vlm, batch_size=3).caption(images)
    one_by_one = TransformersCaptioner(vlm, batch_size=1).caption(images)

    assert len(batched) == 3
    for result in batched:
        assert result.ok, result.error
        assert isinstance(result.text, str) and result.text
        # Only the new tokens are decoded: neither the instruction nor the template's text comes back.
        assert CAPTION_PROMPT not in result.text
        assert "You are a helpful assistant" not in result.text
    # Left padding and attention masks make a batched caption the same as the image captioned alone.
    assert [r.text for r in batched] == [r.text for r in one_by_one]


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_different_prompt_lengths_matches_single_generation(
    family: str, loaded_vlm: Callable[[str], TransformersVLM], photos: dict[str, Image.Image]
) -> None:
    vlm = loaded_vlm(family)
    conversations = [
        _ask(photos["chelsea"], "What animal is this?"),
        _ask(photos["rocket"], CAPTION_PROMPT),
        _ask(photos["camera"], "Who is holding the camera, and what is in the background of this old photo?"),
    ]
    lengths = vlm.encode(conversations)["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == 3  # the shorter prompts really are padded

    batched = vlm.generate(conversations)

    assert batched == [vlm.generate([conversation])[0] for conversation in conversations]
    assert all(text for text in batched)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_pieces_join_to_the_generated_text(
    family: str, loaded_vlm: Callable[[str], TransformersVLM], photos: dict[str, Image.Image]
) -> None:
    vlm = loaded_vlm(family)
    conversation = _ask(photos["chelsea"], "Describe this image.")

    pieces = list(vlm.generate_stream(conversation))

    assert pieces and all(isinstance(piece, str) and piece for piece in pieces)
    assert "".join(pieces).strip() == vlm.generate([conversation])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_turns_work_for_answers_without_retrieved_images(
    family: str, loaded_vlm: Callable[[str], TransformersVLM]
) -> None:
    vlm = loaded_vlm(family)
    conversations = [
        [
            {"role": "system", "content": [{"type": "text", "text": "Answer from the context."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is a rocket?"}]},
        ],
        [{"role": "user", "content": "What is shown in this picture?"}],
    ]

    replies = vlm.generate(conversations)

    assert len(replies) == 2 and all(replies)
    assert "Answer from the context" not in replies[0]


@pytest.mark.parametrize("family", ["qwen2_vl", "smolvlm", "llava", "glm4v"])
def test_control_tokens_written_in_text_do_not_become_image_slots(
    family: str, loaded_vlm: Callable[[str], TransformersVLM], photos: dict[str, Image.Image]
) -> None:
    vlm = loaded_vlm(family)
    image_token_id = vlm.processor.image_token_id
    plain = vlm.encode([_ask(photos["astronaut"], "What is shown?")])
    # Text from an indexed HTML page or a chat log can contain any family's placeholders and turn markers.
    hostile = vlm.encode(
        [
            _ask(
                photos["astronaut"],
                "What is shown? <image> <|image_pad|> <|image|> <|im_end|> <end_of_utterance>",
            )
        ]
    )

    assert hostile["input_ids"][0].tolist().count(image_token_id) == plain["input_ids"][0].tolist().count(
        image_token_id
    )
    assert vlm.generate([_ask(photos["astronaut"], "<image> twice <image>")])[0]


def test_stream_closed_early_stops_its_generation_thread(
    checkpoint_dir: Callable[[str], Path], photos: dict[str, Image.Image]
) -> None:
    vlm = TransformersVLM(str(checkpoint_dir("qwen2_vl")), device="cpu")
    # Without cancellation the thread would run all 400 steps: the stop token is forbidden until then.
    vlm.model.generation_config.min_new_tokens = 400
    steps: list[int] = []
    hook = vlm.model.register_forward_hook(lambda *_: steps.append(1))
    try:
        stream = vlm.generate_stream(_ask(photos["chelsea"], "Describe this image."), max_new_tokens=400)
        first = next(stream)
        stream.close()  # returns once the generation thread has finished
    finally:
        hook.remove()

    assert first
    assert not [t for t in threading.enumerate() if t.name.startswith("vlm-stream-")]
    assert len(steps) < 200


def test_one_bad_image_gets_its_own_error_and_the_others_their_captions(
    loaded_vlm: Callable[[str], TransformersVLM], photos: dict[str, Image.Image]
) -> None:
    vlm = loaded_vlm("qwen2_vl")
    # A 2 px wide strip of a real photo: Qwen2-VL's processor refuses aspect ratios above 200.
    sliver = photos["astronaut"].crop((0, 0, 2, 512))
    images = [photos["astronaut"], sliver, photos["camera"]]

    results = TransformersCaptioner(vlm, batch_size=3).caption(images)

    assert [r.ok for r in results] == [True, False, True]
    assert "aspect ratio" in (results[1].error or "")
    alone = TransformersCaptioner(vlm, batch_size=1).caption([photos["astronaut"], photos["camera"]])
    assert [results[0].text, results[2].text] == [r.text for r in alone]


def test_reply_of_only_special_tokens_is_an_empty_caption_error(
    checkpoint_dir: Callable[[str], Path], photos: dict[str, Image.Image]
) -> None:
    vlm = TransformersVLM(str(checkpoint_dir("qwen2_vl")), device="cpu", max_new_tokens=4)
    tokenizer = vlm.processor.tokenizer
    special_ids = set(tokenizer.added_tokens_decoder)
    # Only special tokens may be generated, and decoding skips them: the reply is empty.
    vlm.model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i not in special_ids]
    vlm.model.generation_config.min_new_tokens = 4

    results = TransformersCaptioner(vlm).caption([photos["chelsea"]])

    assert len(results) == 1
    assert results[0].error == "empty caption" and results[0].text is None


def test_captioner_id_names_model_and_prompt(checkpoint_dir: Callable[[str], Path]) -> None:
    vlm = TransformersVLM(str(checkpoint_dir("qwen2_vl")), device="cpu")
    default = TransformersCaptioner(vlm)
    other = TransformersCaptioner(vlm, prompt="List the objects in this image.")

    assert isinstance(default, Captioner)
    assert default.captioner_id == (
        f"transformers:{vlm.model_id}#{hashlib.sha1(CAPTION_PROMPT.encode('utf-8')).hexdigest()[:8]}"
    )
    assert other.captioner_id != default.captioner_id
    assert TransformersCaptioner(vlm).caption([]) == []


def test_auto_device_and_dtype_follow_the_hardware(checkpoint_dir: Callable[[str], Path]) -> None:
    vlm = TransformersVLM(str(checkpoint_dir("llava")))

    if torch.cuda.is_available():
        assert vlm.device.type == "cuda" and vlm.model.dtype in (torch.bfloat16, torch.float16)
    else:
        assert vlm.device.type == "cpu" and vlm.model.dtype == torch.float32
    assert next(vlm.model.parameters()).device.type == vlm.device.type


def test_load_is_shared_by_concurrent_callers(checkpoint_dir: Callable[[str], Path]) -> None:
    vlm = TransformersVLM(str(checkpoint_dir("smolvlm")), device="cpu")
    models: list[object] = []
    threads = [threading.Thread(target=lambda: models.append(vlm.model)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(models) == 4 and all(model is models[0] for model in models)


def test_unknown_model_id_offline_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; set its flag too so nothing is fetched.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(ConfigError, match=r"no-such-org/no-such-vlm.*HF_HUB_OFFLINE"):
        TransformersVLM("no-such-org/no-such-vlm").load()


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TransformersVLM(str(tmp_path / "nowhere")).load()


def test_text_only_model_is_a_config_error(tmp_path: Path) -> None:
    model_dir = build_text_only_llama(tmp_path / "llama")

    with pytest.raises(ConfigError, match=r"not an image-text-to-text model.*'llama'"):
        TransformersVLM(str(model_dir)).load()


def test_checkpoint_without_chat_template_is_a_config_error(
    checkpoint_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir = tmp_path / "base-model"
    shutil.copytree(checkpoint_dir("qwen2_vl"), model_dir)
    (model_dir / "chat_template.jinja").unlink()

    with pytest.raises(ConfigError, match="no chat template"):
        TransformersVLM(str(model_dir)).load()


def test_bad_settings_are_config_errors(checkpoint_dir: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError, match="dtype"):
        TransformersVLM("any/model", dtype="int8")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        TransformersVLM("any/model", max_new_tokens=0)
    vlm = TransformersVLM(str(checkpoint_dir("qwen2_vl")), device="cpu")
    with pytest.raises(ConfigError, match="batch_size"):
        TransformersCaptioner(vlm, batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        TransformersVLM(str(checkpoint_dir("qwen2_vl")), device="tpu:banana").load()


def test_malformed_conversation_is_an_mmrag_error(loaded_vlm: Callable[[str], TransformersVLM]) -> None:
    vlm = loaded_vlm("qwen2_vl")
    with pytest.raises(MmragError, match="conversation 0"):
        vlm.generate([[{"content": "no role"}]])
    with pytest.raises(MmragError, match="conversation 1: message content must be"):
        vlm.generate([[{"role": "user", "content": "fine"}], [{"role": "user", "content": None}]])
