"""POST /ask: retrieval through the service (filters, metrics), then mmrag.generate's Answerer.

Generation runs on its own threads, not the query pool: a slow model must not hold up searches. One
answer is generated at a time per local model (transformers, llm), whose generate calls are not meant to
run concurrently; the OpenAI-compatible client bounds its own concurrency. A streamed answer is produced
by one thread from start to end and handed to the event loop piece by piece, so two streams never wait on
each other's threads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from mmrag.api.schemas import AskRequest, AskResponse, QualityIssueOut, SourceOut
from mmrag.api.service import CollectionHandle, Service

if TYPE_CHECKING:
    from mmrag.generate import Answer, Answerer, SourceRef

_END = object()


def available() -> bool:
    try:
        import mmrag.generate as generate
    except ImportError:
        return False
    return hasattr(generate, "Answerer") and hasattr(generate, "build_generator")


class AnswerService:
    """The generator (built once, weights loaded on first use) and the threads answers are made on."""

    def __init__(self, service: Service) -> None:
        from mmrag.generate import build_generator

        self.service = service
        self.generator = build_generator(service.settings)
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="mmrag-generate")
        local = self.generator is not None and service.settings.generate.backend in ("transformers", "llm")
        self._slot: threading.BoundedSemaphore | None = threading.BoundedSemaphore(1) if local else None

    def answerer(self) -> Answerer:
        from mmrag.generate import Answerer

        settings = self.service.settings
        return Answerer(None, self.generator, settings.generate, settings.data_dir)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def slot(self) -> _Slot:
        return _Slot(self._slot, self.service)


class _Slot:
    """Holds the model (when it is local) for one answer and times it as the "generate" stage."""

    def __init__(self, semaphore: threading.BoundedSemaphore | None, service: Service) -> None:
        self.semaphore, self.service = semaphore, service
        self.start = 0.0

    def __enter__(self) -> None:
        if self.semaphore is not None:
            self.semaphore.acquire()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.service.metrics.stage("ask", "generate", time.perf_counter() - self.start)
        if self.semaphore is not None:
            self.semaphore.release()


def _answers(service: Service) -> AnswerService:
    if service.answers is None:
        service.answers = AnswerService(service)
    return service.answers  # type: ignore[no-any-return]


async def answer(
    service: Service, handle: CollectionHandle, req: AskRequest, image: Image.Image | None
) -> Any:
    from mmrag.api.routes.search import to_filters

    start = time.perf_counter()
    answers = _answers(service)
    found = await service.run(
        service.search,
        handle,
        text=req.question,
        image=image,
        k=req.k,
        fusion=req.fusion,
        filters=to_filters(service, req.filters),
        operation="ask",
    )
    hits = [f.hit for f in found]
    documents = {f.hit.item_id: f.document.id for f in found}
    answerer = answers.answerer()
    loop = asyncio.get_running_loop()
    if not req.stream:

        def run() -> Answer:
            with answers.slot():
                return answerer.answer_from_hits(req.question, hits, image)

        result = await loop.run_in_executor(answers.executor, run)
        body = ask_response(service, result, documents, start)
        return JSONResponse(body.model_dump(mode="json"))

    stream = answerer.stream_from_hits(req.question, hits, image)
    return StreamingResponse(
        _sse(service, answers, stream, documents, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    service: Service, answers: AnswerService, stream: Any, documents: dict[int, int], start: float
) -> AsyncIterator[str]:
    """Events: `sources` (what was retrieved, at once), `token` (each piece of the answer, as JSON
    {"text": ...}), then `done` with the whole answer as /ask returns it without streaming. When the
    streamed reply fails the quality check, `done` says so (`fallback`, `quality_issues`) and its `answer`
    holds the sentences from the sources that replace the tokens already sent."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def push(value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, value)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
            cancelled.set()

    def produce() -> None:
        try:
            with answers.slot():
                for piece in stream:
                    if cancelled.is_set():
                        break
                    push(piece)
                push(("done", stream.answer))
        except Exception as exc:  # surfaced as the done event's error, not a dropped connection
            push(("error", exc))
        finally:
            push(_END)

    sources = [source_out(service, s, documents) for s in stream.sources]
    yield _event("sources", [s.model_dump(mode="json") for s in sources])
    loop.run_in_executor(answers.executor, produce)
    try:
        while True:
            value = await queue.get()
            if value is _END:
                return
            if isinstance(value, str):
                yield _event("token", {"text": value})
            elif value[0] == "done":
                yield _event(
                    "done", ask_response(service, value[1], documents, start).model_dump(mode="json")
                )
            else:
                error = f"answer generation failed: {type(value[1]).__name__}: {value[1]}"
                yield _event("error", {"error": "generation_failed", "message": error})
    finally:
        cancelled.set()  # the client left: the producer stops at its next piece


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def source_out(service: Service, source: SourceRef, documents: dict[int, int]) -> SourceOut:
    return SourceOut(
        number=source.number,
        item_id=source.item_id,
        document_id=documents.get(source.item_id),
        path=service.public_path(source.path),
        page=source.page,
        bbox=source.bbox,
        modality=source.modality,
        score=source.score,
        sent_as=source.sent_as,
        cited=source.cited,
        left_out=source.left_out,
        image_url=f"/v1/items/{source.item_id}/image" if source.modality != "text" else None,
    )


def ask_response(service: Service, result: Answer, documents: dict[int, int], start: float) -> AskResponse:
    return AskResponse(
        question=result.question,
        answer=result.text,
        backend=result.backend,
        cited=result.cited,
        sources=[source_out(service, s, documents) for s in result.sources],
        left_out=[source_out(service, s, documents) for s in result.left_out],
        citations_added=result.citations_added,
        dropped_citations=result.dropped_citations,
        quality_issues=[QualityIssueOut(check=i.check, reason=i.reason) for i in result.quality_issues],
        fallback=result.fallback,
        rejected_answer=result.rejected_answer,
        error=result.error,
        warnings=result.warnings,
        took_ms=round((time.perf_counter() - start) * 1000, 3),
    )
