"""The Ray runner: the ingest stages on a Ray cluster (`mmrag index DIR --runner ray`, mmrag[ray]).

    driver     plan (walk, sniff, compare with the database): the files to extract, as a Ray dataset
    tasks      extract: one task per file, its items as rows (thumbnails written to the blob store)
    actors     one actor pool per model (map_batches with ActorPoolStrategy; a GPU per actor where the
               cluster has GPUs; a batch size per model): caption -> OCR -> CLIP -> text space
    driver     commit: the rows of each file, once all have arrived, in one transaction (the one writer),
               then the vector store; new captions into the cache

Model actors never open the database: the caption cache is read before the run (every cached caption of
the run's captioner and OCR engine, handed to their actors as a snapshot) and new captions are stored by
the driver as their rows arrive. Rows carry plain data: ints, strings (JSON for an item's fields), raw RGB
pixels and pickled vectors.

The cluster: `ingest.ray.address` (or --ray-address) "" starts one on this machine for the run (stopped
after it), "auto" joins the cluster this machine belongs to, "ray://host:10001" reaches one through Ray
Client. Joining a cluster ships this mmrag package to it (runtime_env py_modules); its workers need
mmrag's dependencies installed (the compose file's image has them), and thumbnails and S3 inputs need a
blob store they all reach (blobs.url=s3://...).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.collection import Collection
from mmrag.errors import ConfigError, MmragError
from mmrag.ingest.items import ExtractedItem, Modality
from mmrag.ingest.plan import (
    FileOutcome,
    FileTask,
    IndexReport,
    NoProgress,
    ProgressSink,
    plan,
    walked_paths,
)
from mmrag.ingest.stages import FileExtracted, commit, extract, record_failure
from mmrag.ingest.stages import prune as prune_documents
from mmrag.ingest.vectorise import (
    DatabaseCaptionCache,
    PendingItem,
    compose_descriptions,
    describe,
    embed_clip,
    embed_text,
    engine_id,
)
from mmrag.settings import Settings
from mmrag.store.duplicates import DuplicateGrouper

log = logging.getLogger(__name__)

MISSING_RAY = "the Ray runner needs Ray: pip install 'mmrag[ray]'"
_ITEMS_PER_OUTPUT = 16  # an extraction task hands its items on in batches of this many (memory stays flat)
_MAX_BLOCKS = 4096


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"{MISSING_RAY} ({exc})") from exc
    return ray


@contextmanager
def ray_cluster(settings: Settings) -> Iterator[Any]:
    """Ray, connected: to the cluster this process is already connected to, or as ingest.ray.address
    says (a cluster started here is shut down afterwards, and with it everything still running)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    cfg = settings.ingest.ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if cfg.address:
        import mmrag

        kwargs["address"] = cfg.address
        kwargs["runtime_env"] = {"py_modules": [str(Path(mmrag.__file__).parent)]}
    elif cfg.object_store_memory:
        kwargs["object_store_memory"] = cfg.object_store_memory
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = cfg.address or "a cluster on this machine"
        raise ConfigError(f"cannot start or reach the Ray cluster ({where}): {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ---- rows: what travels between the stages on the cluster -------------------------------------------------

_EMPTY_ROW: dict[str, Any] = {
    "task": -1,  # index of the file's FileTask in the run
    "seq": -1,  # the item's place in its file; -1: the row that ends the file
    "item": "",  # JSON: the item's fields (modality, hash, page, bbox, text, meta, thumbnail)
    "image": b"",  # raw RGB pixels, fitted for the models; b"" for text
    "width": 0,
    "height": 0,
    "vectors": b"",  # pickled {space: float32 vector}
    "end": "",  # JSON of the FileExtracted, on the row that ends the file
    "items": 0,  # on that row: how many item rows the file has
    "error": "",  # why vectorising this file failed
    "described": "",  # JSON [[engine id, image hash, text, error], ...]: fresh captions for the cache
}
_INT_COLUMNS = frozenset({"task", "seq", "width", "height", "items"})


def item_row(task: int, seq: int, item: PendingItem) -> dict[str, Any]:
    ex = item.extracted
    row = {**_EMPTY_ROW, "task": task, "seq": seq}
    row["item"] = json.dumps(
        {
            "modality": ex.modality.value if isinstance(ex.modality, Modality) else str(ex.modality),
            "content_hash": ex.content_hash,
            "page": ex.page,
            "bbox": list(ex.bbox) if ex.bbox is not None else None,
            "text": ex.text,
            "meta": ex.meta,
            "thumbnail": item.thumbnail,
        }
    )
    if ex.image is not None:
        image = ex.image if ex.image.mode == "RGB" else ex.image.convert("RGB")
        row["image"], (row["width"], row["height"]) = image.tobytes(), image.size
    return row


def end_row(task: int, ended: FileExtracted, items: int) -> dict[str, Any]:
    return {**_EMPTY_ROW, "task": task, "end": json.dumps(ended.__dict__), "items": items}


def row_item(row: Mapping[str, Any]) -> PendingItem:
    fields = json.loads(row["item"])
    image = None
    if row.get("image"):  # the driver's rows have no pixels
        image = Image.frombytes("RGB", (int(row["width"]), int(row["height"])), bytes(row["image"]))
    extracted = ExtractedItem(
        modality=Modality(fields["modality"]),
        content_hash=fields["content_hash"],
        page=fields["page"],
        bbox=tuple(fields["bbox"]) if fields["bbox"] is not None else None,
        text=fields["text"],
        image=image,
        meta=fields["meta"],
    )
    vectors = pickle.loads(row["vectors"]) if row["vectors"] else {}
    return PendingItem(extracted, fields["thumbnail"], vectors=vectors)


def _store_item(row: dict[str, Any], item: PendingItem) -> None:
    """Write what a model stage changed (text, meta, vectors) back into the row; pixels stay as they were."""
    fields = json.loads(row["item"])
    fields["text"], fields["meta"] = item.extracted.text, item.extracted.meta
    row["item"] = json.dumps(fields)
    row["vectors"] = pickle.dumps({k: np.asarray(v, dtype=np.float32) for k, v in item.vectors.items()})


def to_batch(rows: Sequence[Mapping[str, Any]], pixels: bool = True) -> dict[str, np.ndarray]:
    """Rows as columns; without the pixels once no later stage needs them (they never go to the driver)."""
    return {
        name: np.asarray([row[name] for row in rows], dtype=np.int64 if name in _INT_COLUMNS else object)
        for name in _EMPTY_ROW
        if pixels or name != "image"
    }


def from_batch(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    size = len(batch["task"])
    return [{name: _plain(column[i]) for name, column in batch.items()} for i in range(size)]


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):  # a binary column can arrive as an array of bytes
        return value.tobytes()
    return value


# ---- extract: Ray tasks -------------------------------------------------------------------------------


def extract_files(batch: dict[str, np.ndarray], settings: Settings) -> Iterator[dict[str, np.ndarray]]:
    """map_batches function: each FileTask of the batch -> its item rows, then the row that ends it."""
    from mmrag.blobs import open_blob_store

    blobs = open_blob_store(settings)
    for index, blob in zip(batch["task"], batch["file"], strict=True):
        task: FileTask = pickle.loads(blob)
        rows: list[dict[str, Any]] = []
        for seq, event in enumerate(extract(task, settings, blobs)):
            if isinstance(event, FileExtracted):
                rows.append(end_row(int(index), event, seq))  # seq items came before it
                break
            rows.append(item_row(int(index), seq, event))
            if len(rows) >= _ITEMS_PER_OUTPUT:
                yield to_batch(rows)
                rows = []
        yield to_batch(rows)


# ---- vectorise: one actor pool per model --------------------------------------------------------------


class _ModelStage:
    """An actor that owns one model: items of a batch in, the same rows out with what the model added.
    When a batch fails, its files are retried one by one so that only the file at fault fails; errors of
    ours (a misconfigured model) concern every file and stop the run."""

    def __init__(self, settings: Settings, last: bool = False) -> None:
        self.settings = settings
        self.last = last  # the last model stage: its rows go to the driver, without their pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = from_batch(batch)
        live = [row for row in rows if row["seq"] >= 0 and not row["error"]]
        items = [row_item(row) for row in live]
        try:
            self._apply(live, items)
        except MmragError:
            raise
        except Exception:
            by_task: dict[int, list[int]] = defaultdict(list)
            for position, row in enumerate(live):
                by_task[row["task"]].append(position)
            for positions in by_task.values():
                group_rows = [live[p] for p in positions]
                group_items = [row_item(row) for row in group_rows]
                try:
                    self._apply(group_rows, group_items)
                except MmragError:
                    raise
                except Exception as exc:  # the model choked on something in this file
                    log.warning("embedding failed for a file", exc_info=True)
                    for row in group_rows:
                        row["error"] = f"embedding failed: {type(exc).__name__}: {exc}"
        return to_batch(rows, pixels=not self.last)

    def _apply(self, rows: list[dict[str, Any]], items: list[PendingItem]) -> None:
        self.run(items)
        for row, item in zip(rows, items, strict=True):
            _store_item(row, item)
        self._note_fresh(rows, items)

    def run(self, items: list[PendingItem]) -> None:
        raise NotImplementedError

    def _note_fresh(self, rows: list[dict[str, Any]], items: list[PendingItem]) -> None:
        pass


def _images(items: Sequence[PendingItem]) -> list[PendingItem]:
    return [it for it in items if it.extracted.image is not None]


def _chunks(items: Sequence[PendingItem]) -> list[PendingItem]:
    return [it for it in items if it.extracted.image is None and it.extracted.text]


class DescribeStage(_ModelStage):
    """Caption or OCR (`stage`), skipping the images in the cache snapshot."""

    def __init__(self, settings: Settings, stage: str, known: Any, last: bool = False) -> None:
        super().__init__(settings, last)
        from mmrag.caption.factory import build_captioner, build_ocr

        self.stage = stage
        engine = build_captioner(settings) if stage == "caption" else build_ocr(settings)
        assert engine is not None
        self.engine = engine
        self.engine_id = engine_id(engine, stage)
        ray = import_ray()
        self.known: dict[str, str] = dict(ray.get(known) if isinstance(known, ray.ObjectRef) else known)
        self._fresh: list[tuple[str, str | None, str | None]] = []

    def run(self, items: list[PendingItem]) -> None:
        batch = self.settings.caption.batch_size
        self._fresh = describe(self.engine, self.stage, _images(items), self.known, batch)
        self.known.update({h: text for h, text, error in self._fresh if error is None and text is not None})

    def _note_fresh(self, rows: list[dict[str, Any]], items: list[PendingItem]) -> None:
        if not self._fresh:
            return
        for h, text, error in self._fresh:  # on the first row with that image: stored once by the driver
            row = next(r for r, it in zip(rows, items, strict=True) if it.extracted.content_hash == h)
            noted = json.loads(row["described"]) if row["described"] else []
            row["described"] = json.dumps([*noted, [self.engine_id, h, text, error]])
        self._fresh = []


class ClipStage(_ModelStage):
    def __init__(self, settings: Settings, last: bool = False) -> None:
        super().__init__(settings, last)
        from mmrag.embed.clip import ClipEmbedder

        self.clip = ClipEmbedder(settings.models)
        self.with_images = settings.ingest.road in ("clip", "both")

    def run(self, items: list[PendingItem]) -> None:
        embed_clip(self.clip, _images(items) if self.with_images else [], _chunks(items))


class TextStage(_ModelStage):
    def __init__(self, settings: Settings, last: bool = False) -> None:
        super().__init__(settings, last)
        from mmrag.embed.text import TextEmbedder

        models = settings.models
        self.text = TextEmbedder(models.text, device=models.device, cache_dir=models.cache_dir)

    def run(self, items: list[PendingItem]) -> None:
        images = _images(items)
        compose_descriptions(images)
        embed_text(self.text, images, _chunks(items))


# ---- the driver ---------------------------------------------------------------------------------------


@dataclass
class _Arriving:
    """One file's rows as they come back from the cluster."""

    items: dict[int, PendingItem] = field(default_factory=dict)
    ended: FileExtracted | None = None
    expected: int = -1  # item rows, known once the row that ends the file has arrived
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.ended is not None and len(self.items) == self.expected


@dataclass
class StagePlan:
    """Which model stages a run needs, and how each is scaled."""

    name: str
    batch_size: int
    gpus: float


def model_stages(settings: Settings, cluster_gpus: float) -> list[StagePlan]:
    cfg = settings.ingest.ray
    road = settings.ingest.road
    describing = settings.spaces.text and road in ("caption", "both")
    wanted = []
    if describing and settings.caption.backend != "none":
        wanted.append(("caption", settings.caption.batch_size, settings.caption.backend == "transformers"))
    if describing and settings.caption.ocr:
        wanted.append(("ocr", settings.caption.batch_size, False))  # onnxruntime's CPU build
    if settings.spaces.clip:
        wanted.append(("clip", settings.models.batch_size, True))
    if settings.spaces.text:
        wanted.append(("text", settings.models.batch_size, True))
    per_worker = cfg.gpus_per_worker
    gpus = (1.0 if cluster_gpus > 0 else 0.0) if per_worker == "auto" else float(per_worker)
    return [
        StagePlan(name, cfg.batch_size.get(name, default), gpus if uses_gpu else 0.0)  # type: ignore[call-overload]
        for name, default, uses_gpu in wanted
    ]


class RayRunner:
    def __init__(
        self,
        settings: Settings,
        collection: Collection,
        document_meta: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        import_ray()  # a missing Ray is said before anything is walked
        self.settings = settings
        self.collection = collection
        self.document_meta = document_meta or {}
        self.captions = DatabaseCaptionCache(collection.db)
        self.execution_stats = ""

    def run(
        self, roots: Sequence[Path | str], prune: bool = False, progress: ProgressSink | None = None
    ) -> IndexReport:
        progress = progress or NoProgress()
        report = IndexReport()
        entries = list(plan(roots, self.settings, self.collection.documents_by_path))
        progress.start(len(entries))
        tasks = [entry for entry in entries if isinstance(entry, FileTask)]
        for entry in entries:
            if isinstance(entry, FileOutcome):
                report.add(entry)
                progress.file_done(entry)
        try:
            if tasks:
                with ray_cluster(self.settings) as ray:
                    self._run_on_cluster(ray, tasks, report, progress)
            if prune:
                report.pruned = prune_documents(self.collection, roots, walked_paths(entries))
            self.collection.optimise()
        except KeyboardInterrupt:
            report.interrupted = True  # files not committed are redone by the next run
        finally:
            self.collection.save()
        return report

    def _run_on_cluster(
        self, ray: Any, tasks: list[FileTask], report: IndexReport, progress: ProgressSink
    ) -> None:
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # ours is the one that matters
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cfg = self.settings.ingest.ray
        stages = model_stages(self.settings, float(ray.cluster_resources().get("GPU", 0)))
        dataset = ray.data.from_items(
            [{"task": i, "file": pickle.dumps(task)} for i, task in enumerate(tasks)],
            override_num_blocks=min(len(tasks), _MAX_BLOCKS),
        ).map_batches(
            extract_files,
            batch_size=1,
            num_cpus=cfg.extract_cpus,
            fn_kwargs={"settings": self.settings},
            # What decoding the largest image allowed takes (RGB). It also keeps extraction out of the model
            # actors: Ray fuses a task stage into the next actor stage when their resources agree.
            memory=3 * self.settings.ingest.max_image_pixels,
        )
        for position, stage in enumerate(stages, start=1):
            kind, kwargs = self._stage_class(ray, stage.name)
            dataset = dataset.map_batches(
                kind,
                fn_constructor_kwargs={"settings": self.settings, "last": position == len(stages), **kwargs},
                compute=ActorPoolStrategy(size=cfg.workers),
                batch_size=stage.batch_size,
                num_cpus=cfg.cpus_per_worker,
                num_gpus=stage.gpus,
            )
        self._commit_rows(dataset, tasks, report, progress)
        self.execution_stats = dataset.stats()  # per operator: tasks, actors, time (bench, tests)

    def _stage_class(self, ray: Any, name: str) -> tuple[type, dict[str, Any]]:
        if name in ("caption", "ocr"):
            from mmrag.caption.factory import build_captioner, build_ocr

            engine = build_captioner(self.settings) if name == "caption" else build_ocr(self.settings)
            assert engine is not None  # the models load in the actors: here only the id is read
            from mmrag.store.captions import all_captions

            known = ray.put(all_captions(self.collection.db, engine_id(engine, name)))
            return DescribeStage, {"stage": name, "known": known}
        return (ClipStage if name == "clip" else TextStage), {}

    def _commit_rows(
        self, dataset: Any, tasks: list[FileTask], report: IndexReport, progress: ProgressSink
    ) -> None:
        arriving: dict[int, _Arriving] = defaultdict(_Arriving)
        duplicates = DuplicateGrouper(self.collection.db, self.collection.name)  # one reading per run
        since_save = 0
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
        try:
            for batch in _unwrapped(batches):
                rows = from_batch(batch)
                fresh: dict[str, list[tuple[str, str | None, str | None]]] = defaultdict(list)
                embedded = 0
                for row in rows:
                    file = arriving[row["task"]]
                    if row["error"] and file.error is None:
                        file.error = row["error"]
                    if row["described"]:
                        for engine, h, text, error in json.loads(row["described"]):
                            fresh[engine].append((h, text, error))
                    if row["seq"] < 0:
                        file.ended = FileExtracted(**json.loads(row["end"]))
                        file.expected = row["items"]
                    else:
                        file.items[row["seq"]] = row_item(row)
                        embedded += 1
                for engine, results in fresh.items():  # the cache, after the models
                    self.captions.store(engine, results)
                if embedded:
                    progress.items_embedded(embedded)
                for index in [i for i, f in arriving.items() if f.complete]:
                    file = arriving.pop(index)
                    assert file.ended is not None
                    task = tasks[index]
                    outcome = commit(
                        self.collection,
                        task,
                        file.ended,
                        [file.items[s] for s in sorted(file.items)],
                        meta=self.document_meta.get(task.file.path),
                        error=file.error,
                        duplicates=duplicates,
                    )
                    report.add(outcome)
                    progress.file_done(outcome)
                    since_save += outcome.status == "indexed"
                    if since_save >= self.settings.ingest.save_every_files:
                        self.collection.save()
                        since_save = 0
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the dataset's tasks and actors (an interrupted run leaves nothing running)
        for index in arriving:  # cannot happen unless the cluster lost rows: said, not hidden
            outcome = record_failure(
                self.collection, tasks[index].file, "", "the Ray cluster returned only part of this file"
            )
            report.add(outcome)
            progress.file_done(outcome)


def _unwrapped(batches: Iterator[Any]) -> Iterator[Any]:
    """The batches; an error of ours raised on the cluster (a misconfigured model) comes out as itself."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            cause = _mmrag_cause(exc)
            if cause is not None:
                raise cause from None
            raise
        yield batch


def _mmrag_cause(exc: BaseException) -> MmragError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MmragError):
            return current
        as_cause = getattr(current, "as_instanceof_cause", None)
        if as_cause is not None:
            try:
                unwrapped = as_cause()
                if isinstance(unwrapped, MmragError):
                    return unwrapped
            except Exception:
                pass
        current = current.__cause__ or current.__context__
    return None
