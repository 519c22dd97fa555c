"""Answer generation: the retrieved items go to a VLM or a text-only LLM, which writes a cited answer."""

from __future__ import annotations

from mmrag.generate.answer import Answer, Answerer, AnswerStream, SourceRef
from mmrag.generate.backends import Generator, build_generator
from mmrag.generate.prompt import SYSTEM_PROMPT, Prompt, PromptBuilder, PromptLimits

__all__ = [
    "SYSTEM_PROMPT",
    "Answer",
    "AnswerStream",
    "Answerer",
    "Generator",
    "Prompt",
    "PromptBuilder",
    "PromptLimits",
    "SourceRef",
    "build_generator",
]
