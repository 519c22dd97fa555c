"""The `mmrag` command: a thin surface over the pipeline, the retriever and the store."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from mmrag import __version__
from mmrag.errors import MmragError
from mmrag.settings import Settings

if TYPE_CHECKING:
    from mmrag.generate.answer import Answer
    from mmrag.ingest.plan import IndexReport
    from mmrag.store.db import Database

app = typer.Typer(
    name="mmrag",
    help="Index and search your images, scans and PDFs.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flags without metavars, and [extras] printed as written
)
err = Console(stderr=True, soft_wrap=True)  # paths in messages must survive intact for grep
out = Console(soft_wrap=True)


class _State:
    """Global options, set by the callback before any command runs."""

    config: str | None = None
    overrides: ClassVar[dict[str, Any]] = {}


def _print_version(value: bool) -> None:
    if value:
        out.print(f"mmrag {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML settings file, or a packaged profile by name (offline). A collection remembers the "
            "setup it was built with: later commands on it need no --config.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where indexes, database and thumbnails live.")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection to work on.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    threads: Annotated[
        int | None, typer.Option(min=0, help="torch, FAISS and ONNX Runtime threads (0 = auto).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # model loaders draw their own progress bars; ours is the one that matters
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _State.config = config
    _State.overrides = {}
    if data_dir is not None:
        _State.overrides["data_dir"] = data_dir
    if collection is not None:
        _State.overrides["collection"] = collection
    if threads is not None:
        _State.overrides["threads"] = threads


def _settings(needs_models: bool = True, db: Database | None = None, **extra: Any) -> Settings:
    """The command's settings: the collection's recorded setup under what was given explicitly, and on a
    first run, settings whose models can load here (notes say what was chosen)."""
    from mmrag.runtime import resolve_settings
    from mmrag.threads import apply_threads

    settings, notes = resolve_settings(_State.config, {**_State.overrides, **extra}, needs_models, db=db)
    _print_notes(notes)
    apply_threads(settings.threads)  # before any model or index loads: OpenMP reads it once
    return settings


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        err.print("[yellow]note:[/] ", end="")
        err.print(note, markup=False, highlight=False)


def start_up_done() -> None:
    """Resume the garbage collector that the entry point paused (`mmrag.__main__`), with what start-up
    created frozen: long work (indexing, serving) runs with it on, and it never scans start-up's objects.
    Nothing to do where it was not paused (the CLI called in-process, as the tests do)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code)


def _runtime(needs_models: bool = True, needs_index: bool = False, **extra: Any):  # type: ignore[no-untyped-def]
    """needs_index: the command reads what was indexed; on a data dir with nothing in it, it says so
    (and creates nothing)."""
    from mmrag.runtime import database_exists, open_runtime
    from mmrag.settings import load_settings
    from mmrag.store.db import Database

    given = load_settings(_State.config, **_State.overrides, **extra)
    exists = database_exists(given)
    if needs_index and not exists:
        raise MmragError(_nothing_indexed(given))
    # One database connection pool for the whole command: the recorded setup, the collection check and the
    # runtime (each open costs a connection and a schema check, a round trip each on PostgreSQL).
    db = Database(given.db_url) if exists else None
    try:
        if needs_index:
            assert db is not None
            _require_collection(given, db)
        rt = open_runtime(_settings(needs_models, db=db, **extra), db=db)
    except BaseException:
        if db is not None:
            db.close()
        raise
    for rep in rt.repairs:
        if rep.changed:
            what = "rebuilt" if rep.rebuilt else f"added {rep.added}, removed {rep.removed}"
            err.print(f"[yellow]repaired the {rep.space} index from the database:[/] {what}")
    start_up_done()
    return rt


def _require_collection(settings: Settings, db: Database) -> None:
    """A command that reads a collection names one that exists: a mistyped --collection is an error naming
    the collections there are, not a new empty collection (nor, without the hub, a minute of retries)."""
    from mmrag.store.collections import collection_exists, collection_names

    if collection_exists(db, settings.collection):
        return
    names = collection_names(db)
    there = f"collections here: {', '.join(names)}" if names else "no collection has anything indexed yet"
    raise MmragError(f"{_nothing_indexed(settings)} ({there})")


def _nothing_indexed(settings: Settings) -> str:
    return (
        f"nothing is indexed in collection {settings.collection!r} (data dir {settings.data_dir}): "
        "run `mmrag index DIR` first"
    )


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("indexing", total=None, items=0, rate="")
        self.items = 0  # embedded, not only committed: the count moves while a batch of files is open

    def start(self, total_files: int) -> None:
        self.progress.update(self.task, total=total_files)

    def items_embedded(self, count: int) -> None:
        self.items += count
        elapsed = self.progress.tasks[self.task].elapsed or 0.0
        rate = f"{self.items / elapsed:.1f} items/s" if elapsed > 1 else ""
        self.progress.update(self.task, items=self.items, rate=rate)

    def file_done(self, outcome: Any) -> None:
        self.progress.update(self.task, advance=1)
        if outcome.status == "failed":
            self.progress.console.print("[red]failed[/] ", end="")
            self.progress.console.print(f"{outcome.path}: {outcome.reason}", markup=False, highlight=False)


_LISTED_UNSUPPORTED = 10


def _shown(path: str) -> str:
    """Paths under the working directory are shown relative to it: tables stay readable."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@app.command()
def index(
    paths: Annotated[list[str], typer.Argument(help="Folders (or files, or s3://bucket/prefix) to index.")],
    prune: Annotated[bool, typer.Option(help="Remove items of files that disappeared under PATHS.")] = False,
    road: Annotated[
        str | None, typer.Option(help="Images go through: clip (image tower), caption (caption + OCR), both.")
    ] = None,
    runner: Annotated[
        str | None,
        typer.Option(
            help="local (this process, the default) or ray (a Ray cluster: pip install 'mmrag[ray]')."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --runner ray: auto (this machine's cluster) or ray://host:10001; none starts one."
        ),
    ] = None,
) -> None:
    """Index folders of images, PDFs and text/Markdown files. Unchanged files are skipped."""
    from mmrag.ingest.discover import check_root

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # a kill finishes like Ctrl-C: consistent state
    ingest: dict[str, Any] = {"road": road} if road else {}
    if runner is not None:
        if runner not in ("local", "ray"):
            raise _fail(ValueError(f"--runner must be local or ray, not {runner!r}"))
        ingest["runner"] = runner
    if ray_address is not None:
        ingest["ray"] = {"address": ray_address}
    roots: list[Path | str] = [p if p.startswith("s3://") else Path(p) for p in paths]
    extra: dict[str, Any] = {"ingest": ingest} if ingest else {}
    try:
        for root in roots:  # the checks the walk makes, before anything loads or is created
            if isinstance(root, Path):
                check_root(root)
        report, waiting = _index_unchanged(roots, prune, extra), 0
        if report is None:
            rt = _runtime(**extra)
            from mmrag.ingest.runners import make_runner
            from mmrag.runtime import record_setup

            record_setup(rt)  # a collection's first run records how it is built; later runs follow it
            indexer = make_runner(rt.settings.ingest.runner, rt.settings, rt.collection, rt.vectoriser())
            with rt.collection.writer(), _index_progress() as progress:
                report = indexer.run(roots, prune, _RichProgress(progress))
            waiting = rt.collection.waiting()
            rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    err.print(
        f"indexed {report.indexed} files ({report.items} items), {report.unchanged} unchanged, "
        f"{len(report.failed)} failed, {report.unsupported} not supported"
        + (f", {report.pruned} pruned" if prune else "")
    )
    for failure in report.failed:
        err.print("  [red]failed[/] ", end="")
        err.print(f"{failure.path}: {failure.reason}", markup=False, highlight=False)
    for skipped in report.unsupported_files[:_LISTED_UNSUPPORTED]:
        err.print(f"  not supported {skipped.path}: {skipped.reason}", markup=False, highlight=False)
    if report.unsupported > _LISTED_UNSUPPORTED:
        err.print(f"  ... and {report.unsupported - _LISTED_UNSUPPORTED} more not supported", markup=False)
    if report.interrupted:
        err.print("[yellow]interrupted:[/] what was committed is kept; run the same command again to finish")
        raise typer.Exit(130)
    if waiting:
        err.print(
            f"[yellow]{waiting} items wait for the vector store[/] (it did not acknowledge them; see the "
            "warnings above): they are in the database and are sent again by the next command that writes"
        )
    if report.failed or waiting:
        raise typer.Exit(1)


def _index_progress() -> Progress:
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files · {task.fields[items]} items · {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("· ETA"),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=err, transient=False)


def _index_unchanged(roots: list[Path | str], prune: bool, extra: dict[str, Any]) -> IndexReport | None:
    """The report of a run that finds every file as indexed, when that can be seen without SQLAlchemy or
    a model (mmrag.quick); None when the run has work to do or needs the full path to tell."""
    if prune or not all(isinstance(root, Path) for root in roots):
        return None
    from mmrag.ingest.plan import IndexReport
    from mmrag.quick import quick_collection, unchanged_outcomes, writer_lock_if_free

    with quick_collection(_State.config, {**_State.overrides, **extra}) as quick:
        if quick is None or quick.settings.ingest.runner != "local":
            return None
        with writer_lock_if_free(quick) as free:  # no other writer, and none wrote since the look
            fresh = free and quick.unchanged_since_opened()
            outcomes = unchanged_outcomes(quick, [Path(root) for root in roots]) if fresh else None
        if outcomes is None:
            return None  # the full path's start-up (SQLAlchemy, models) still runs with the collector paused
        _print_notes(quick.notes)
    start_up_done()  # not before the walk: it makes no cycles, and what it makes lives until the report
    report = IndexReport()
    with _index_progress() as progress:
        sink = _RichProgress(progress)
        sink.start(len(outcomes))
        for outcome in outcomes:
            report.add(outcome)
            sink.file_done(outcome)
    return report


@app.command()
def query(
    text: Annotated[str | None, typer.Argument(help="What to look for.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Find items like this image.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many results.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            help="Only items that match, KEY=VALUE: modality=image|text|page, document=ID, "
            "path=FILE-OR-FOLDER, meta.KEY=VALUE (the document's metadata). Repeat it: different keys must "
            "all match, values of one key are alternatives.",
        ),
    ] = None,
) -> None:
    """Search the collection with text and/or an image."""
    from mmrag.filters import Filters
    from mmrag.ingest.images import load_model_image

    if not text and image is None:
        raise _fail(ValueError("give a text query, --image PATH, or both"))
    try:
        filters = Filters.parse(where) if where else None
        rt = _runtime(needs_index=True)
        query_image = load_model_image(image, rt.settings.ingest.max_image_pixels) if image else None
        hits = rt.retriever().search(text, query_image, k, filters=filters)
        rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    if not hits:
        err.print("no results" + (" (nothing matches --where)" if filters is not None else ""))
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in hits]))
    elif out.is_terminal:
        out.print(_hits_table(hits, title=f"{len(hits)} results for {_query_label(text, image)}"))
    else:  # piped: one tab-separated line per hit, never wrapped (for grep, cut, less)
        print("rank\tscore\tmodality\tsource\tpage\tmatch")
        for rank, h in enumerate(hits, start=1):
            match = snippet(h.text) + _hit_notes(h)
            print(f"{rank}\t{h.score:.4f}\t{h.modality}\t{_shown(h.path)}\t{h.page or ''}\t{match}")


def _hit_notes(hit: Any) -> str:
    """What a hit stands for beyond its own text: ' [contents page]', ' [+2 on this page]',
    ' [also in: report.pdf p.3, copy.jpg]'."""
    notes = []
    if hit.list_page:
        notes.append("contents/index page")
    if hit.more_on_page:
        notes.append(f"+{hit.more_on_page} on this page")
    if hit.also_in:
        copies = [Path(c["path"]).name + (f" p.{c['page']}" if c["page"] else "") for c in hit.also_in]
        notes.append("also in: " + ", ".join(copies))
    return "".join(f" [{note}]" for note in notes)


def snippet(text: str | None, limit: int = 120) -> str:
    """A hit's text (a chunk, or an image's caption and OCR text) on one line, cut at a word."""
    flat = " ".join((text or "").split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + " ..."


def _query_label(text: str | None, image: Path | None) -> str:
    parts = [f"{text!r}"] if text else []
    if image is not None:
        parts.append(f"image {image.name}")
    return " + ".join(parts)


def _hits_table(hits: list[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score")
    table.add_column("modality")
    table.add_column("source", overflow="fold")
    table.add_column("match", overflow="fold", ratio=1)
    table.add_column("found by", overflow="fold")
    for rank, h in enumerate(hits, start=1):
        where = _shown(h.path) + (f" p.{h.page}" if h.page else "")
        found_by = ", ".join(f"{name}#{r}" for name, r in h.ranks.items())
        cells = (str(rank), f"{h.score:.3f}", h.modality, where, snippet(h.text) + _hit_notes(h), found_by)
        table.add_row(*(Text(cell) for cell in cells))  # paths and text are data, never markup
    return table


_GENERATION_FAILED = 3  # `mmrag ask`: retrieval worked, the answer could not be generated


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the collection.")],
    image: Annotated[Path | None, typer.Option("--image", help="An image the question is about.")] = None,
    k: Annotated[
        int | None, typer.Option("-k", min=1, max=100, help="Retrieved items to offer the model.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: answer, citations, sources.")] = False,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is generated.")] = True,
) -> None:
    """Answer a question with the generator in settings (generate.*), citing the retrieved sources.

    Exit code 3: the generator failed or gave no usable answer; the retrieved sources are still printed.
    """
    from mmrag.generate.answer import Answerer
    from mmrag.ingest.images import load_model_image

    if not question.strip():
        raise _fail(ValueError("the question is empty"))
    try:
        rt = _runtime(needs_index=True)
        query_image = load_model_image(image, rt.settings.ingest.max_image_pixels) if image else None
        answerer = Answerer.from_runtime(rt)
        if as_json or not stream:
            result = answerer.answer(question, query_image, k)
        else:
            pieces = answerer.stream(question, query_image, k)
            printed = False
            for piece in pieces:
                out.print(piece, end="", markup=False, highlight=False)
                printed = True
            if printed:
                out.print()
            result = pieces.answer
        rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        if result.text is not None and stream and result.citations_added:
            out.print("\nWith the citations mmrag matched to it:", markup=False)
        if result.fallback is not None:  # the reasons follow on stderr, with the other warnings
            which = "\nThe answer above" if stream else "The model's answer"
            out.print(f"{which} failed the quality check; instead, sentences from the sources:", markup=False)
        if result.text is not None and (not stream or result.citations_added or result.fallback):
            out.print(result.text, markup=False, highlight=False)
        _print_answer_sources(result)
    for warning in result.warnings:
        err.print("[yellow]warning:[/] ", end="")
        err.print(warning, markup=False, highlight=False)
    if result.error:
        err.print("[bold red]error:[/] ", end="")
        err.print(result.error, markup=False, highlight=False)
        raise typer.Exit(_GENERATION_FAILED)


def _print_answer_sources(result: Answer) -> None:
    if result.error:
        out.print("\nRetrieved sources (no answer was generated):", markup=False)
        listed = result.retrieved
    else:
        out.print("\nSources:", markup=False)
        listed = result.sources
    for source in listed:
        number = f"[{source.number}]" if source.number is not None else "-"
        where = _shown(source.path) + (f" p.{source.page}" if source.page else "")
        if source.bbox and source.page:  # where on the page; an image file's box is just its size
            where += " bbox=(" + ", ".join(f"{v:.0f}" for v in source.bbox) + ")"
        mark = " cited" if source.cited else ""
        line = f"  {number} {where}  {source.modality}  score {source.score:.3f}  item {source.item_id}{mark}"
        out.print(line, markup=False, highlight=False)
    if not result.error and result.left_out:
        out.print(f"  ({len(result.left_out)} more retrieved, not given to the model)", markup=False)


@app.command()
def delete(
    paths: Annotated[list[Path], typer.Argument(help="Indexed files (or folders) to remove.")],
) -> None:
    """Remove documents (and their items) from the collection."""
    from mmrag.ingest.discover import printable_path
    from mmrag.ingest.pipeline import _is_under

    try:
        rt = _runtime(needs_models=False, needs_index=True)
        wanted = [printable_path(p.expanduser().resolve()) for p in paths]
        with rt.collection.writer():
            docs = [d for d in rt.collection.documents() if any(_is_under(d.path, w) for w in wanted)]
            removed = rt.collection.delete_documents(d.id for d in docs)
            rt.collection.save()
        rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    if not removed:
        raise _fail(MmragError(f"no indexed document under {', '.join(wanted)}"), code=1)
    err.print(f"removed {removed} document(s)")


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts of documents, items and index entries; failed files and why; how the collection was built."""
    from mmrag.quick import quick_collection, quick_stats

    try:
        with quick_collection(_State.config, _State.overrides) as quick:  # an SQLite look, when it does
            if quick is not None:
                _print_notes(quick.notes)
                info = quick_stats(quick)
        if quick is None:
            info = _full_stats()
    except MmragError as exc:
        raise _fail(exc) from None
    by_modality: dict[str, int] = info["items"]
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"collection [bold]{info['collection']}[/] in {info['data_dir']}")
    out.print(f"documents: {info['documents']} indexed, {len(info['failed'])} failed")
    out.print("items: " + (", ".join(f"{n} {m}" for m, n in sorted(by_modality.items())) or "none"))
    for space, ix in info["indexes"].items():
        out.print(
            f"index {space}: {ix['count']} vectors, {ix['type']} on {ix['device']}, "
            f"{ix['model']} ({ix['dim']}-d)",
            markup=False,
            highlight=False,
        )
    if info["pending"]:
        out.print(f"{info['pending']} items wait for the vector store (retried by the next write)")
    if info["setup"]:
        out.print("built with: " + _describe_setup(info["setup"]), markup=False, highlight=False)
    for f in info["failed"]:
        out.print("  [red]failed[/] ", end="")
        out.print(f"{f['path']}: {f['error']}", markup=False, highlight=False)


def _full_stats() -> dict[str, Any]:
    from mmrag.quick import stats_report
    from mmrag.store import pending
    from mmrag.store.collections import read_setup
    from mmrag.store.items import modality_counts

    rt = _runtime(needs_models=False, needs_index=True)
    coll = rt.collection
    info = stats_report(
        rt.settings,
        coll.store.kind,
        coll.documents(),
        modality_counts(rt.db, coll.name),
        coll.describe(),
        pending.count(rt.db, coll.name) if coll.store.durable else 0,
        read_setup(rt.db, coll.name),
    )
    rt.close()
    return info


def _describe_setup(setup: dict[str, Any]) -> str:
    spaces = [
        f"{space} space ({setup.get(f'models.{space}')})"
        for space in ("clip", "text")
        if setup.get(f"spaces.{space}")
    ]
    captioner = setup.get("caption.backend") or "none"
    if setup.get("caption.model"):
        captioner += f" {setup['caption.model']}"
    answers = setup.get("generate.backend") or "none"
    if setup.get("generate.model") and answers != "none":
        answers += f" {setup['generate.model']}"
    return (
        f"{', '.join(spaces)}; images by the {setup.get('ingest.road')} road; captioner {captioner}"
        f"{' + OCR' if setup.get('caption.ocr') else ''}; chunks of {_chunk_sizes(setup)} words; "
        f"answers by {answers}"
    )


@app.command()
def reindex(
    to: Annotated[str, typer.Option("--to", help="The vector store to move to: faiss or milvus.")],
) -> None:
    """Move the collection's vectors to another vector store (index.backend), from the vectors the database
    keeps: nothing is embedded again. Later commands on the collection use the new store."""
    from mmrag.collection_setup import STORE_SETTINGS, setup_of
    from mmrag.store import pending
    from mmrag.store.collections import update_setup

    if to not in ("faiss", "milvus"):
        raise _fail(MmragError(f"--to {to!r}: choose faiss or milvus"))
    try:
        # Opening with index.backend=TO fills the new store from the database's vectors (a store that
        # lags the database is caught up on open); resync does it as the writer if a reader could not.
        rt = _runtime(needs_models=False, needs_index=True, index={"backend": to})
        target = rt.collection
        target.resync()
        if not target.store.durable:
            pending.clear(rt.db, target.name)
        chosen = setup_of(rt.settings)
        update_setup(rt.db, target.name, {path: chosen[path] for path in STORE_SETTINGS})
        described = target.describe()
        rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    for key, ix in described.items():
        out.print(f"index {key}: {ix.count} vectors, {ix.type} on {ix.device}", markup=False, highlight=False)
    err.print(f"collection {target.name!r} now uses index.backend={to}")


def _chunk_sizes(setup: dict[str, Any]) -> str:
    clip, text = (
        setup.get("ingest.chunk_words"),
        setup.get("ingest.text_chunk_words", setup.get("ingest.chunk_words")),
    )
    if not setup.get("spaces.text"):
        return str(clip)
    if not setup.get("spaces.clip") or clip == text:
        return str(text)
    return f"{clip} (clip) and {text} (text)"


@app.command()
def duplicates(
    regroup: Annotated[
        bool, typer.Option(help="Recompute every group from the fingerprints (after a rule change).")
    ] = False,
    backfill: Annotated[
        bool, typer.Option(help="Fingerprint images indexed before fingerprints, from their thumbnails.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List groups of near-duplicate images: one picture as a file, inside a PDF, resized or re-saved."""
    from dataclasses import asdict

    from mmrag.retrieve.duplicates import format_groups
    from mmrag.store import duplicates as store

    try:
        rt = _runtime(needs_models=False, needs_index=True)
        name = rt.collection.name
        if backfill or regroup:
            with rt.collection.writer():
                if backfill:
                    written = store.backfill_fingerprints(rt.db, name, rt.settings.data_dir)
                    err.print(f"fingerprinted {written} image(s) from their thumbnails")
                store.regroup(rt.db, name)  # backfilled images join groups only through a regroup
        groups = store.duplicate_groups(rt.db, name)
        rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps([[asdict(location) for location in group] for group in groups]))
    else:
        out.print(format_groups(groups), markup=False, highlight=False)


@app.command("eval")
def evaluate(
    qrels: Annotated[Path, typer.Argument(help="JSONL file of queries and their relevant items.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    per_index: Annotated[bool, typer.Option(help="Also score each space and each index alone.")] = True,
    fusion: Annotated[str | None, typer.Option(help="Fusion to evaluate: calibrated, rrf or raw.")] = None,
) -> None:
    """Recall@1/5/10, MRR, nDCG@10 and latency of the collection on labelled queries (docs/evaluation.md)."""
    from mmrag.evaluation.qrels import load_qrels
    from mmrag.evaluation.runner import render_report, retriever_search_fn, run_eval

    try:
        queries = load_qrels(qrels)
        rt = _runtime(needs_index=True, **({"retrieve": {"fusion": fusion}} if fusion else {}))
        retriever = rt.retriever()
        rankings = _eval_rankings(rt.collection.index_keys(), retriever.lexical) if per_index else []
        report = run_eval(queries, retriever_search_fn(retriever, queries), per_space=rankings)
        rt.close()
    except MmragError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _print_whole(
            render_report(report, title=f"{len(queries)} queries, fusion={rt.settings.retrieve.fusion}")
        )


def _print_whole(table: Table) -> None:
    """A table on standard output; piped or redirected, at its natural width (rich would cut its columns
    to 80, and a number cut off in a saved report is a wrong number)."""
    if out.is_terminal:
        out.print(table)
        return
    from rich.measure import Measurement

    width = Measurement.get(out, out.options.update(max_width=10_000), table).maximum
    Console(width=width, soft_wrap=True).print(table)


def _eval_rankings(indexes: Any, lexical: bool) -> list[str]:
    """The rankings `mmrag eval` scores besides the fused one: every embedding space together ("dense",
    when there are several), each space, each index, and the lexical lists (together, then per modality)."""
    spaces = sorted({key.partition(".")[0] for key in indexes})
    modalities = sorted({key.partition(".")[2] for key in indexes})
    rankings = (["dense"] if len(spaces) > 1 else []) + [*spaces, *sorted(indexes)]
    if lexical:
        rankings += ["lexical", *(f"lexical.{m}" for m in modalities)] if len(modalities) > 1 else ["lexical"]
    return rankings


@app.command("make-eval-set")
def make_eval_set(
    kind: Annotated[str, typer.Argument(help="photos | digits | lfw | gnuplot | bash")],
    folder: Annotated[
        Path, typer.Argument(help="Where to write the files and their qrels-KIND.jsonl (for `mmrag eval`).")
    ],
) -> None:
    """Write a labelled evaluation set built from real data that ships with scikit-image/scikit-learn."""
    from mmrag.evaluation import datasets

    builders = {
        "photos": datasets.build_photo_set,
        "digits": datasets.build_digits_set,
        "lfw": datasets.build_lfw_set,
        "gnuplot": datasets.build_pdf_sections_set,  # Debian gnuplot-doc's manual, outline -> page
        "bash": datasets.build_bash_sections_set,  # Debian bash-doc's reference manual, outline -> page
    }
    if kind not in builders:
        raise _fail(MmragError(f"unknown evaluation set {kind!r}; choose one of {', '.join(builders)}"))
    start_up_done()
    try:
        path = builders[kind](folder)
    except MmragError as exc:
        raise _fail(exc) from None
    out.print(str(path))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port).")] = None,
) -> None:
    """Run the REST service (docs at /docs, schema at /openapi.json). Needs `pip install 'mmrag[serve]'`."""
    # Requests run on a pool of threads, each with its own OpenMP team in torch and FAISS; spinning teams
    # starve each other on a busy CPU (queries 5-10x slower on 2 cores). The settings (which apply the
    # thread count and OMP_WAIT_POLICY=PASSIVE, mmrag.threads) come first: the API's imports load FAISS.
    try:
        settings = _settings()  # the default collection's recorded setup; on a first run, models that load
    except MmragError as exc:
        raise _fail(exc) from None
    try:
        import uvicorn

        from mmrag.api import create_app
    except ImportError as exc:
        raise _fail(MmragError(f"the service needs its extras: pip install 'mmrag[serve]' ({exc})")) from None
    try:
        from mmrag.store.job_queue import check_can_serve

        check_can_serve(settings)  # a second writer of a single-writer vector store is refused here
    except MmragError as exc:
        raise _fail(exc) from None
    if not settings.api.authentication:
        err.print(
            "[yellow]no API keys configured (api.api_key_hashes, api.keys):[/] every client is let in; "
            "`mmrag key` makes one"
        )
    host, port = host or settings.api.host, port or settings.api.port
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    url = escape(f"http://{shown}:{port}/")
    err.print(f"web page: [bold]{url}[/]  (API docs: /docs)")
    service = create_app(settings)
    start_up_done()
    uvicorn.run(
        service,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )


@app.command()
def key(
    collections: Annotated[
        list[str] | None,
        typer.Option(
            "--collection",
            help="Scope the key to this collection (repeatable; '*' = every collection). None: full access.",
        ),
    ] = None,
    admin: Annotated[bool, typer.Option(help="A scoped key that may also make and revoke keys.")] = False,
) -> None:
    """Print a new API key, its sha256 digest, and the setting that makes the server accept it."""
    from pydantic import ValidationError

    from mmrag.api.security import key_instructions, new_api_key
    from mmrag.settings import ApiKeySettings

    key_value, digest = new_api_key()
    if collections:
        try:
            ApiKeySettings(sha256=digest, collections=collections, admin=admin)
        except ValidationError as exc:
            raise _fail(MmragError("; ".join(e["msg"] for e in exc.errors()))) from None
    elif admin:
        err.print("[yellow]--admin without --collection:[/] a key in api.api_key_hashes is an admin anyway")
    out.print(key_instructions(key_value, digest, collections, admin), markup=False, highlight=False)


def run() -> None:  # pragma: no cover - console entry
    sys.exit(app())
