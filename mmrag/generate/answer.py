"""Answer a question from the collection: retrieve, assemble the prompt, generate, check the citations.

    answerer = Answerer.from_runtime(runtime)
    answer = answerer.answer("what is on the launch pad?", k=8)
    answer.text, answer.used_sources, answer.error

A generator that fails (unreachable server, model that cannot load, empty or malformed reply) does not
raise: the Answer carries `error` (naming the backend and the cause) and still lists the retrieved sources.
Retrieval errors do raise, as in `mmrag query`.

A reply that fails the quality gate (`mmrag.generate.quality`: repetition, words or code in no source,
citations that do not fit, nothing said) is replaced by sentences extracted from the sources, each cited
with its real number: `fallback == "extractive"`, `quality_issues` says why, and `rejected_answer` keeps
what the model wrote. `generate.quality_gate: false` turns the gate off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmrag.errors import MmragError
from mmrag.generate.backends import Generator
from mmrag.generate.citations import (
    CheckedReply,
    StreamCleaner,
    attribute_sentences,
    check_reply,
    has_answer_text,
)
from mmrag.generate.prompt import Prompt, PromptBuilder, PromptLimits
from mmrag.generate.quality import FailedCheck, SourceText, check_answer, describe, extractive_answer
from mmrag.ingest.images import fit_for_model
from mmrag.retrieve.search import Hit
from mmrag.settings import GenerateSettings

if TYPE_CHECKING:
    from mmrag.retrieve.search import Retriever
    from mmrag.runtime import Runtime

logger = logging.getLogger(__name__)

_REPLY_SNIPPET = 200


@dataclass
class SourceRef:
    """A retrieved item: where it is (path, page, bbox), how it ranked, and what the model saw of it.

    `item_id` fetches the item; `thumbnail` is its image's path under the data directory.
    """

    number: int | None  # the [n] the answer cites it by; None when it was not given to the model
    item_id: int
    path: str
    page: int | None
    bbox: list[float] | None
    modality: str
    score: float
    thumbnail: str | None
    sent_as: str | None = None  # "image" or "text"; None when left out
    cited: bool = False
    left_out: str | None = None  # why it was not given to the model

    @classmethod
    def from_hit(cls, hit: Hit, number: int | None = None, **fields: Any) -> SourceRef:
        return cls(
            number=number,
            item_id=hit.item_id,
            path=hit.path,
            page=hit.page,
            bbox=list(hit.bbox) if hit.bbox is not None else None,
            modality=hit.modality,
            score=hit.score,
            thumbnail=hit.thumbnail,
            **fields,
        )


@dataclass
class Answer:
    question: str
    text: str | None  # None when no answer could be generated (see error)
    backend: str
    sources: list[SourceRef] = field(default_factory=list)  # given to the model, numbered 1..n
    left_out: list[SourceRef] = field(default_factory=list)  # retrieved, but not given (budget, no text)
    cited: list[int] = field(default_factory=list)
    dropped_citations: list[int] = field(default_factory=list)  # numbers the model cited that name no source
    citations_added: bool = False  # True: the model cited nothing and mmrag matched sentences to sources
    # Quality gate: the checks the model's reply failed; when any did, `text` holds sentences extracted from
    # the sources instead ("extractive"), and the reply is kept in `rejected_answer`.
    quality_issues: list[FailedCheck] = field(default_factory=list)
    fallback: str | None = None
    rejected_answer: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @property
    def used_sources(self) -> list[SourceRef]:
        return [source for source in self.sources if source.cited]

    @property
    def retrieved(self) -> list[SourceRef]:
        return [*self.sources, *self.left_out]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Answerer:
    def __init__(
        self,
        retriever: Retriever | None,
        generator: Generator | None,
        settings: GenerateSettings,
        data_dir: Path,
    ) -> None:
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        self.data_dir = Path(data_dir)

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Answerer:
        return cls(
            runtime.retriever(), runtime.generator, runtime.settings.generate, runtime.settings.data_dir
        )

    @property
    def backend_name(self) -> str:
        return self.generator.name if self.generator is not None else "none"

    def retrieve(self, question: str, image: Image.Image | None = None, k: int | None = None) -> list[Hit]:
        if self.retriever is None:
            raise MmragError("this Answerer has no retriever; pass hits to answer_from_hits")
        return self.retriever.search(question, image, k or self.settings.k)

    def answer(self, question: str, image: Image.Image | None = None, k: int | None = None) -> Answer:
        return self.answer_from_hits(question, self.retrieve(question, image, k), image)

    def stream(self, question: str, image: Image.Image | None = None, k: int | None = None) -> AnswerStream:
        """Retrieval happens now (its errors raise here); generation as the stream is iterated."""
        return self.stream_from_hits(question, self.retrieve(question, image, k), image)

    def answer_from_hits(
        self, question: str, hits: Sequence[Hit], image: Image.Image | None = None
    ) -> Answer:
        run = _Run(self, question, hits, image)
        ready = run.prepare()
        if ready is not None:
            generator, prompt = ready
            try:
                reply = generator.generate(prompt, self.settings.max_tokens)
            except MmragError as exc:
                return run.failed(exc)
            run.finish(reply, check_reply(reply, run.numbers))
        return run.answer

    def stream_from_hits(
        self, question: str, hits: Sequence[Hit], image: Image.Image | None = None
    ) -> AnswerStream:
        return AnswerStream(_Run(self, question, hits, image))


class AnswerStream:
    """Iterate for the answer's text pieces (citations already checked); then read `.answer`.

    The pieces join to the answer's text, except that citations mmrag adds to a reply without any
    (`citations_added`) appear only in `.answer`. Failures end the iteration and show up in `.answer.error`.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._pieces: Iterator[str] | None = None
        self._done = False

    @property
    def sources(self) -> list[SourceRef]:
        """Everything retrieved, before generation: the API can show sources while the answer streams."""
        return [SourceRef.from_hit(hit) for hit in self._run.hits]

    def __iter__(self) -> Iterator[str]:
        if self._pieces is None:
            self._pieces = self._generate()
        return self._pieces

    @property
    def answer(self) -> Answer:
        if not self._done:
            for _ in self:
                pass
        return self._run.answer

    def _generate(self) -> Iterator[str]:
        run = self._run
        try:
            ready = run.prepare()
            if ready is None:
                return
            generator, prompt = ready
            cleaner = StreamCleaner(run.numbers)
            try:
                for piece in generator.stream(prompt, run.answerer.settings.max_tokens):
                    shown = cleaner.feed(piece)
                    if shown:
                        yield shown
            except MmragError as exc:
                run.failed(exc, partial=cleaner.raw)
                return
            except GeneratorExit:  # the consumer stopped reading; the backend's stream is closed with us
                run.answer.error = "the answer stream was closed before the answer was complete"
                raise
            rest = cleaner.finish()
            if rest:
                yield rest
            run.finish(cleaner.raw, check_reply(cleaner.raw, run.numbers))
        finally:
            self._done = True


class _Run:
    """One question's way through prompt assembly and generation; `answer` is filled in as it goes."""

    def __init__(
        self, answerer: Answerer, question: str, hits: Sequence[Hit], image: Image.Image | None
    ) -> None:
        self.answerer = answerer
        self.question = question
        self.hits = list(hits)
        self.image = fit_for_model(image) if image is not None else None
        self.prompt: Prompt | None = None
        self.answer = Answer(
            question=question,
            text=None,
            backend=answerer.backend_name,
            left_out=[SourceRef.from_hit(hit) for hit in self.hits],
        )

    @property
    def numbers(self) -> list[int]:
        return [source.number for source in self.prompt.sources] if self.prompt else []

    def prepare(self) -> tuple[Generator, Prompt] | None:
        """Load the generator and build the prompt; None (and answer.error set) when that fails."""
        generator = self.answerer.generator
        if generator is None:
            self.answer.error = (
                "answer generation is off (generate.backend: none); showing what was retrieved"
            )
            for source in self.answer.left_out:
                source.left_out = "answer generation is off"
            return None
        settings = self.answerer.settings
        limits = PromptLimits(
            context_tokens=settings.context_tokens,
            image_tokens=settings.image_tokens,
            max_source_chars=settings.max_source_chars,
            max_images=settings.max_images,
            max_image_side=settings.max_image_side,
            max_image_bytes=settings.max_image_bytes,
        )
        try:
            generator.load()
            builder = PromptBuilder(
                limits, self.answerer.data_dir, generator.count_tokens, sees_images=generator.sees_images
            )
            prompt = builder.build(self.question, self.hits, self.image)
        except MmragError as exc:
            self.failed(exc)
            return None
        self.prompt = prompt
        self.answer.sources = [
            SourceRef.from_hit(source.hit, number=source.number, sent_as=source.sent_as)
            for source in prompt.sources
        ]
        self.answer.left_out = [SourceRef.from_hit(o.hit, left_out=o.reason) for o in prompt.omitted]
        if self.image is not None and not prompt.query_image_sent:
            self.answer.warnings.append(
                f"the query image was used for retrieval only: {generator.name} reads no images"
            )
        return generator, prompt

    def failed(self, exc: Exception, partial: str = "") -> Answer:
        what = f" after {len(partial)} characters of reply" if partial else ""
        self.answer.error = f"answer generation failed{what} ({self.answerer.backend_name}): {exc}"
        for source in self.answer.left_out:
            source.left_out = source.left_out or "no answer was generated"
        logger.info("%s", self.answer.error)  # the caller reports it, with the sources
        return self.answer

    def finish(self, reply: str, checked: CheckedReply) -> None:
        answer = self.answer
        if not has_answer_text(checked.text):
            answer.error = (
                f"{self.answerer.backend_name} returned no answer text "
                f"(reply: {reply[:_REPLY_SNIPPET]!r}{'...' if len(reply) > _REPLY_SNIPPET else ''})"
            )
            return
        sources = self.source_texts()
        if self.answerer.settings.quality_gate:
            report = check_answer(checked.text, self.question, sources)
            answer.quality_issues = report.failed
            if not report.passed and self.fall_back(checked.text, sources):
                return
        if checked.dropped:
            answer.warnings.append(
                "dropped citations of sources that do not exist: "
                + ", ".join(f"[{n}]" for n in checked.dropped)
            )
        if not checked.cited and sources and self.answerer.settings.attribute_uncited:
            attributed = attribute_sentences(
                checked.text, self.question, [(s.number, s.readable) for s in sources]
            )
            if attributed.cited:
                checked = CheckedReply(attributed.text, attributed.cited, checked.dropped)
                answer.citations_added = True
                answer.warnings.append(
                    "the model cited no source; mmrag added citations by matching its sentences to sources"
                )
        if not checked.cited and sources:
            answer.warnings.append("the answer cites no source")
        self.show(checked)

    def source_texts(self) -> list[SourceText]:
        if self.prompt is None:
            return []
        return [SourceText(s.number, s.text, s.hit.path) for s in self.prompt.sources]

    def fall_back(self, model_text: str, sources: list[SourceText]) -> bool:
        """Show sentences extracted from the sources instead of the model's reply; False when none can be."""
        answer = self.answer
        extracted = extractive_answer(self.question, sources)
        why = describe(answer.quality_issues)
        if not extracted.cited:
            answer.warnings.append(
                f"the answer failed the quality check ({why}), and no source holds text to show instead"
            )
            return False
        answer.fallback = "extractive"
        answer.rejected_answer = model_text
        which = (
            "sentences extracted from the sources"
            if extracted.matched
            else "how the best-ranked sources begin (no sentence of theirs shares a word with the question)"
        )
        answer.warnings.append(
            f"the model's answer failed the quality check ({why}); showing {which} instead"
        )
        self.show(extracted)
        return True

    def show(self, checked: CheckedReply) -> None:
        answer = self.answer
        answer.text = checked.text
        answer.cited = checked.cited
        answer.dropped_citations = checked.dropped
        cited = set(checked.cited)
        for source in answer.sources:
            source.cited = source.number in cited
