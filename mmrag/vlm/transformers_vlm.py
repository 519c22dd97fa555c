"""Chat with images through a vision-language model loaded in-process with Hugging Face transformers.

One code path serves every family transformers knows as an image-text-to-text model (Qwen2-VL, Qwen2.5-VL,
SmolVLM, Idefics3, LLaVA, GLM-4.1V, Gemma 3, ...): `AutoProcessor` + `AutoModelForImageTextToText`, the
family's own chat template, batched greedy generation with left padding. Captioning and answer generation
both sit on top of `TransformersVLM.generate` / `generate_stream`.

Conversations use transformers' multimodal chat format:

    [{"role": "user", "content": [{"type": "image", "image": pil_image}, {"type": "text", "text": "..."}]}]
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmrag.errors import ConfigError, MmragError
from mmrag.vlm.images import to_rgb
from mmrag.vlm.openai_client import BackendError

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "float16", "bfloat16")
# Errors transformers and huggingface_hub raise for an id or directory that cannot become a model.
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError)
_STREAM_POLL_S = 0.1


class TransformersVLM:
    """A lazily loaded VLM: nothing is read from disk or the hub until `load()` or the first generation.

    Decoding is greedy (`do_sample=False`) whatever the checkpoint's generation config says: captions are
    cached under the captioner id, so the same image and prompt must give the same text, and a streamed
    answer must equal the non-streamed one. Other settings of the checkpoint's generation config
    (repetition penalty, stop tokens, suppressed tokens) are kept.
    """

    def __init__(
        self,
        model_id: str,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 128,
        trust_remote_code: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        if not model_id or not model_id.strip():
            raise ConfigError(
                "VLM model id is empty; give a hub id such as 'Qwen/Qwen2-VL-2B-Instruct' or a directory"
            )
        if dtype not in _DTYPES:
            raise ConfigError(f"VLM dtype {dtype!r} is not supported; use one of {list(_DTYPES)}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not device or not device.strip():
            raise ConfigError("VLM device is empty; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        self.model_id = model_id.strip()
        self.max_new_tokens = max_new_tokens
        self.trust_remote_code = trust_remote_code
        self.cache_dir = cache_dir
        self._requested_device = device.strip()
        self._requested_dtype = dtype
        self._lock = threading.Lock()
        self._model: PreTrainedModel | None = None
        self._processor: ProcessorMixin | None = None
        self._chat_template: str | None = None
        self._device: torch.device | None = None

    def __repr__(self) -> str:
        state = f"loaded on {self._device}" if self._model is not None else "not loaded"
        return f"TransformersVLM({self.model_id!r}, {state})"

    @property
    def backend_name(self) -> str:
        return f"transformers:{self.model_id}"

    @property
    def model(self) -> PreTrainedModel:
        self.load()
        assert self._model is not None
        return self._model

    @property
    def processor(self) -> ProcessorMixin:
        self.load()
        assert self._processor is not None
        return self._processor

    @property
    def device(self) -> torch.device:
        self.load()
        assert self._device is not None
        return self._device

    def load(self) -> None:
        """Load processor and model once; concurrent callers wait for the first one to finish."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
            from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

            device = self._resolve_device(torch)
            dtype = self._resolve_dtype(torch, device)
            source = {"trust_remote_code": self.trust_remote_code, "cache_dir": self.cache_dir}

            if _looks_like_path(self.model_id) and not Path(self.model_id).expanduser().is_dir():
                raise ConfigError(f"VLM directory {self.model_id!r} does not exist")
            try:
                config = AutoConfig.from_pretrained(self.model_id, **source)
            except _LOAD_ERRORS as exc:
                raise ConfigError(
                    f"cannot load VLM {self.model_id!r}: {_first_line(exc)}{_offline_hint()}"
                ) from exc
            model_type = getattr(config, "model_type", None)
            remote_auto_map = getattr(config, "auto_map", None) or {}
            is_vlm = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or (
                self.trust_remote_code and "AutoModelForImageTextToText" in remote_auto_map
            )
            if not is_vlm:
                raise ConfigError(
                    f"{self.model_id!r} is not an image-text-to-text model (model_type {model_type!r}); "
                    "use a vision-language model such as 'Qwen/Qwen2.5-VL-3B-Instruct' or "
                    "'HuggingFaceTB/SmolVLM-256M-Instruct'"
                )

            try:
                processor = AutoProcessor.from_pretrained(self.model_id, **source)
            except _LOAD_ERRORS as exc:
                raise ConfigError(
                    f"cannot load the processor of VLM {self.model_id!r}: {_first_line(exc)}"
                ) from exc
            tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is None or getattr(processor, "image_processor", None) is None:
                raise ConfigError(
                    f"VLM {self.model_id!r} has no multimodal processor (got {type(processor).__name__}); "
                    "it needs both a tokenizer and an image processor"
                )
            chat_template = _pick_chat_template(processor) or _pick_chat_template(tokenizer)
            if chat_template is None:
                raise ConfigError(
                    f"VLM {self.model_id!r} has no chat template (no chat_template.jinja or "
                    "chat_template.json); use an instruction-tuned checkpoint, which ships one"
                )
            # Batched generation appends new tokens on the right, so prompts must be padded on the left.
            tokenizer.padding_side = "left"

            try:
                model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=dtype, **source)
            except _LOAD_ERRORS as exc:
                raise ConfigError(
                    f"cannot load the weights of VLM {self.model_id!r}: {_first_line(exc)}"
                ) from exc
            model.to(device)
            model.eval()

            self._processor = processor
            self._chat_template = chat_template
            self._device = device
            self._model = model
            logger.info("loaded VLM %s (%s) on %s as %s", self.model_id, type(model).__name__, device, dtype)

    def generate(self, conversations: list[list[dict]], max_new_tokens: int | None = None) -> list[str]:
        """One reply per conversation, in order: only the newly generated text, stripped.

        All conversations run as one batch; split large workloads into batches the device has memory for.
        """
        if not conversations:
            return []
        import torch

        model = self.model
        inputs = self.encode(conversations)
        prompt_length = inputs["input_ids"].shape[1]
        try:
            with torch.inference_mode():
                output_ids = model.generate(
                    **inputs, generation_config=self._generation_config(max_new_tokens)
                )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise BackendError(
                f"VLM {self.model_id!r} failed to generate: {_first_line(exc)}", backend=self.backend_name
            ) from exc
        new_ids = output_ids[:, prompt_length:]
        texts = self.processor.batch_decode(new_ids, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def generate_stream(self, conversation: list[dict], max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield the reply to one conversation piece by piece as it is generated.

        The joined pieces, stripped, equal `generate([conversation])[0]`. Closing the iterator early stops
        the generation thread after its current step.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        model = self.model
        inputs = self.encode([conversation])
        generation_config = self._generation_config(max_new_tokens)
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, timeout=_STREAM_POLL_S, skip_special_tokens=True
        )
        cancelled = threading.Event()
        failures: list[BaseException] = []

        class _StopWhenCancelled(StoppingCriteria):
            def __call__(
                self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
            ) -> torch.BoolTensor:
                return torch.full(
                    (input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device
                )

        def run() -> None:
            try:
                # inference_mode is thread-local: it has to be entered in the thread that runs the model.
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        generation_config=generation_config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenCancelled()]),
                    )
            except BaseException as exc:  # handed to the consumer, which re-raises it
                failures.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name=f"vlm-stream-{self.model_id}", daemon=True)
        worker.start()
        try:
            yield from _drain(streamer, worker)
        finally:
            cancelled.set()
            worker.join()
        if failures:
            raise BackendError(
                f"VLM {self.model_id!r} failed while streaming: {_first_line(failures[0])}",
                backend=self.backend_name,
            ) from failures[0]

    def encode(self, conversations: Sequence[list[dict]]) -> Mapping[str, Any]:
        """The model inputs for `conversations` (token ids, attention mask, pixels) on the model's device.

        Public so callers and tests can see exactly what the model is given.
        """
        processor = self.processor
        prepared = [
            _prepare_conversation(conversation, index, self.backend_name)
            for index, conversation in enumerate(conversations)
        ]
        options: dict[str, Any] = {
            "chat_template": self._chat_template,
            "add_generation_prompt": True,
            "tokenize": True,
            "return_dict": True,
            "return_tensors": "pt",
            "processor_kwargs": {"padding": True, "padding_side": "left"},
        }
        try:
            inputs = self._apply_chat_template(processor, prepared, options)
        except MmragError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OSError, RuntimeError) as exc:
            raise BackendError(
                f"VLM {self.model_id!r} cannot build a prompt from the conversation: {_first_line(exc)}",
                backend=self.backend_name,
            ) from exc
        # Pixel values follow the weights' precision (bfloat16 on GPU); integer tensors only change device.
        return inputs.to(device=self.device, dtype=self.model.dtype)

    def _apply_chat_template(
        self, processor: ProcessorMixin, conversations: list[list[dict]], options: dict[str, Any]
    ) -> Any:
        # Text from documents may spell out control tokens ("<image>", "<|im_end|>"). Encoded as control
        # tokens they would add image slots (the processor then refuses the prompt) or end the turn early,
        # so they are broken up first. (transformers' sanitize_control_tokens does this exactly, but fails
        # for templates that write their tokens through expressions (LLaVA) and for Idefics3's processor.)
        tokens = _control_tokens(processor)
        defused = [_defuse_control_tokens(conversation, tokens) for conversation in conversations]
        return processor.apply_chat_template(defused, **options)

    def _generation_config(self, max_new_tokens: int | None) -> GenerationConfig:
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = max_new_tokens or self.max_new_tokens
        config.max_length = None
        config.do_sample = False
        config.num_beams = 1
        # Sampling knobs are meaningless under greedy decoding and only make transformers warn.
        config.temperature = None
        config.top_p = None
        config.top_k = None
        tokenizer = self.processor.tokenizer
        if config.pad_token_id is None:
            config.pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        if config.eos_token_id is None:
            config.eos_token_id = tokenizer.eos_token_id
        return config

    def _resolve_device(self, torch: Any) -> torch.device:
        requested = self._requested_device
        if requested == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise ConfigError(f"VLM device {requested!r} is not a valid torch device: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"VLM device {requested!r} asked for CUDA, but no CUDA GPU is available; use 'cpu'"
            )
        return device

    def _resolve_dtype(self, torch: Any, device: torch.device) -> torch.dtype:
        if self._requested_dtype == "auto":
            if device.type != "cuda":
                return torch.float32
            # Pre-Ampere GPUs emulate bfloat16 slowly; half precision is their fast path.
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return getattr(torch, self._requested_dtype)


def _drain(streamer: Any, worker: threading.Thread) -> Iterator[str]:
    """Pieces from a TextIteratorStreamer until it ends; a short poll so a dead worker cannot hang us."""
    import queue

    while True:
        try:
            piece = next(streamer)
        except StopIteration:
            return
        except queue.Empty:
            if not worker.is_alive() and streamer.text_queue.empty():
                return
            continue
        if piece:
            yield piece


def _prepare_conversation(conversation: Any, index: int, backend: str) -> list[dict]:
    """Check the chat format and give the processor RGB images (grayscale, palette, RGBA, EXIF-rotated in)."""
    if not isinstance(conversation, list) or not conversation:
        raise BackendError(
            f"conversation {index} must be a non-empty list of messages, got {type(conversation).__name__}",
            backend=backend,
        )
    prepared: list[dict] = []
    for message in conversation:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BackendError(
                f"conversation {index}: every message needs 'role' and 'content', got {message!r:.120}",
                backend=backend,
            )
        content = message["content"]
        if isinstance(content, str):
            prepared.append(message)
            continue
        if not isinstance(content, list):
            raise BackendError(
                f"conversation {index}: message content must be a string or a list of parts, "
                f"got {type(content).__name__}",
                backend=backend,
            )
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("image"), Image.Image):
                part = {**part, "type": "image", "image": to_rgb(part["image"])}
            parts.append(part)
        prepared.append({**message, "content": parts})
    return prepared


def _control_tokens(processor: Any) -> list[str]:
    tokenizer = processor.tokenizer
    # Only special added tokens: some tokenizers also add plain ones (runs of spaces, words) that user
    # text may legitimately contain.
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    tokens = {str(token) for token in added if getattr(token, "special", False)}
    tokens.update(str(token) for token in getattr(tokenizer, "all_special_tokens", []))
    for name in ("image_token", "video_token", "fake_image_token", "global_image_token"):
        value = getattr(processor, name, None)
        if isinstance(value, str):
            tokens.add(value)
    # Longest first so "<|image_pad|>" is handled before a shorter token inside it could be.
    return sorted((token for token in tokens if len(token.strip()) > 1), key=len, reverse=True)


def _defuse_control_tokens(conversation: list[dict], tokens: list[str]) -> list[dict]:
    """Insert a WORD JOINER after the first character of every control-token string found in text parts."""

    def defuse(text: str) -> str:
        for token in tokens:
            if token in text:
                text = text.replace(token, token[0] + "\u2060" + token[1:])
        return text

    result = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            result.append({**message, "content": defuse(content)})
            continue
        parts = [
            {**part, "text": defuse(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
        result.append({**message, "content": parts})
    return result


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).is_absolute()


def _offline_hint() -> str:
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        return " (HF_HUB_OFFLINE is set: only models in the local cache or a local directory can load)"
    return ""


def _pick_chat_template(holder: Any) -> str | None:
    template = getattr(holder, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 400 else line[:400] + "..."
