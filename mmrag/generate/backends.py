"""The generators answers come from, behind one interface; `build_generator` picks one from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from mmrag.generate.prompt import Prompt, SystemTurn, estimate_tokens
from mmrag.settings import Settings

if TYPE_CHECKING:
    from mmrag.generate.local_llm import LocalLLM
    from mmrag.vlm.openai_client import OpenAICompatClient
    from mmrag.vlm.transformers_vlm import TransformersVLM


class Generator(Protocol):
    """Writes the reply to a Prompt; failing, it raises MmragError (BackendError, ConfigError)."""

    @property
    def name(self) -> str:
        """Backend and model, for messages: "openai: model 'x' at http://host/v1"."""
        ...

    @property
    def sees_images(self) -> bool: ...

    def load(self) -> None:
        """Get ready (load weights); a no-op for servers."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: Prompt, max_tokens: int) -> str: ...

    def stream(self, prompt: Prompt, max_tokens: int) -> Iterator[str]: ...


class OpenAIGenerator:
    """Any OpenAI-compatible server. Its tokenizer is unknown here, so the budget uses a length estimate."""

    def __init__(
        self, client: OpenAICompatClient, temperature: float | None = 0.0, sees_images: bool = True
    ) -> None:
        self.client = client
        self.temperature = temperature
        self.sees_images = sees_images

    @property
    def name(self) -> str:
        return f"openai: {self.client.backend_label}"

    def load(self) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def generate(self, prompt: Prompt, max_tokens: int) -> str:
        return self.client.chat(prompt.openai_messages(), max_tokens=max_tokens, temperature=self.temperature)

    def stream(self, prompt: Prompt, max_tokens: int) -> Iterator[str]:
        return self.client.chat_stream(
            prompt.openai_messages(), max_tokens=max_tokens, temperature=self.temperature
        )


class TransformersGenerator:
    """A local VLM: images go in as images, in the family's chat template."""

    sees_images = True

    def __init__(self, vlm: TransformersVLM) -> None:
        self.vlm = vlm
        self._system_as: SystemTurn | None = None

    @property
    def name(self) -> str:
        return f"transformers: VLM {self.vlm.model_id!r}"

    @property
    def system_as(self) -> SystemTurn:
        """How this model's chat template takes the system prompt intact (probed once)."""
        if self._system_as is None:
            self._system_as = _probe_system_turn(self.vlm.processor)
        return self._system_as

    def load(self) -> None:
        self.vlm.load()

    def count_tokens(self, text: str) -> int:
        return len(self.vlm.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation(self, prompt: Prompt) -> list[dict]:
        return prompt.transformers_conversation(self.system_as)

    def generate(self, prompt: Prompt, max_tokens: int) -> str:
        return self.vlm.generate([self.conversation(prompt)], max_new_tokens=max_tokens)[0]

    def stream(self, prompt: Prompt, max_tokens: int) -> Iterator[str]:
        return self.vlm.generate_stream(self.conversation(prompt), max_new_tokens=max_tokens)


_PROBE = "Probe: the rules of this conversation."


def _probe_system_turn(processor: Any) -> SystemTurn:
    """The first system-turn shape the chat template renders with the text intact and not as a Python list."""
    for shape in ("parts", "string"):
        system: Any = [{"type": "text", "text": _PROBE}] if shape == "parts" else _PROBE
        conversation = [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": "Hello."}]},
        ]
        try:
            rendered = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception:
            continue
        if isinstance(rendered, list):
            rendered = rendered[0] if rendered else ""
        if _PROBE in rendered and "'type'" not in rendered:
            return shape  # type: ignore[return-value]
    return "user"


class TextLLMGenerator:
    """A local text-only model: images reach it as their captions and OCR text."""

    sees_images = False

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm

    @property
    def name(self) -> str:
        return f"llm: {self.llm.model_id!r}"

    def load(self) -> None:
        self.llm.load()

    def count_tokens(self, text: str) -> int:
        return self.llm.count_tokens(text)

    def generate(self, prompt: Prompt, max_tokens: int) -> str:
        return self.llm.generate(prompt.text_messages(), max_new_tokens=max_tokens)

    def stream(self, prompt: Prompt, max_tokens: int) -> Iterator[str]:
        return self.llm.generate_stream(prompt.text_messages(), max_new_tokens=max_tokens)


def build_generator(settings: Settings) -> Generator | None:
    """The generator `settings.generate` names (None for backend "none"). Nothing heavy loads here."""
    cfg = settings.generate
    if cfg.backend == "none":
        return None
    if cfg.backend == "openai":
        from mmrag.vlm.openai_client import client_from_settings

        client = client_from_settings(cfg, max_concurrency=1)
        # max_images: 0 serves text-only models (a llama.cpp server with a plain LLM) through this backend.
        return OpenAIGenerator(client, temperature=cfg.temperature, sees_images=cfg.max_images > 0)
    if cfg.backend == "transformers":
        from mmrag.vlm.transformers_vlm import TransformersVLM

        vlm = TransformersVLM(
            cfg.model,
            device=settings.models.device,
            max_new_tokens=cfg.max_tokens,
            cache_dir=settings.models.cache_dir,
        )
        return TransformersGenerator(vlm)
    from mmrag.generate.local_llm import LocalLLM

    llm = LocalLLM(
        cfg.model,
        device=settings.models.device,
        max_new_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        cache_dir=cfg.cache_dir,
        hub_cache_dir=settings.models.cache_dir,
    )
    return TextLLMGenerator(llm)
