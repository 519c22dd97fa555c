"""`mmrag ask` through the real command (typer's runner, in-process) over a real collection indexed with the
tiny CLIP, answered by the OpenAI-compatible stub server running as its own process; `mmrag eval` on the
same collection."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from tests.conftest import tiny_clip_env
from tests.realdata import write_markdown, write_photos

if TYPE_CHECKING:
    from conftest_openai import StubServer

pytestmark = pytest.mark.slow  # indexes a collection with the tiny CLIP: ~10 s of setup
pytest_plugins = ["conftest_openai"]

QUESTION = "Which photo shows a cat?"


@pytest.fixture(scope="module")
def collection_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A collection indexed once for the module; the environment that points `mmrag` at it."""
    env = tiny_clip_env(tmp_path_factory.mktemp("data"))
    root = tmp_path_factory.mktemp("library")
    write_photos(root / "photos", ["chelsea", "rocket", "coffee"])
    write_markdown(root / "notes.md")
    result = CliRunner().invoke(app, ["index", str(root)], env=env)
    assert result.exit_code == 0, result.output
    return {**env, "MMRAG_LIBRARY_UNDER_TEST": str(root)}


@pytest.fixture
def library(collection_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in collection_env.items():
        monkeypatch.setenv(key, value)
    return Path(collection_env["MMRAG_LIBRARY_UNDER_TEST"])


def ask(stub_url: str, model: str, *args: str, **generate: str):  # type: ignore[no-untyped-def]
    env = {
        "MMRAG_GENERATE__BACKEND": "openai",
        "MMRAG_GENERATE__BASE_URL": stub_url,
        "MMRAG_GENERATE__MODEL": model,
        "MMRAG_GENERATE__MAX_RETRIES": "0",
        # The replies are canned and the tiny random CLIP ranks sources at random, so the quality gate
        # would rightly replace most of them; its own test below turns it on.
        "MMRAG_GENERATE__QUALITY_GATE": "false",
        **{f"MMRAG_GENERATE__{key.upper()}": value for key, value in generate.items()},
    }
    return CliRunner().invoke(app, ["ask", *args], env=env)


def source_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("  [")]


@pytest.mark.parametrize("mode", ["--no-stream", "--stream"])
def test_ask_prints_the_answer_then_the_numbered_sources(
    openai_stub: StubServer, library: Path, mode: str
) -> None:
    model = openai_stub.unique("tagged-reply") + ":The cat is in chelsea.jpg [1]. See also [12]."
    result = ask(openai_stub.base_url, model, QUESTION, "-k", "4", mode)

    assert result.exit_code == 0, result.output
    answer, _, sources = result.stdout.partition("\nSources:\n")
    assert answer.strip() == "The cat is in chelsea.jpg [1]. See also."
    lines = source_lines(sources)
    assert len(lines) == 4 and [line.split()[0] for line in lines] == ["[1]", "[2]", "[3]", "[4]"]
    assert lines[0].endswith(" cited") and not any(line.endswith(" cited") for line in lines[1:])
    assert all(" item " in line and " score " in line for line in lines)
    assert not any("bbox=" in line for line in lines)  # photo files and text: no page to place a box on
    assert str(library) in sources or "library" in sources
    assert "dropped citations of sources that do not exist: [12]" in result.stderr
    [record] = openai_stub.records(model)
    assert record["body"].get("stream", False) is (mode == "--stream")


def test_ask_json_has_answer_citations_and_sources(openai_stub: StubServer, library: Path) -> None:
    model = openai_stub.unique("tagged-reply") + ":A cat [2]."
    result = ask(openai_stub.base_url, model, QUESTION, "-k", "3", "--json")

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["text"] == "A cat [2]." and payload["cited"] == [2] and payload["error"] is None
    assert [s["number"] for s in payload["sources"]] == [1, 2, 3]
    cited = payload["sources"][1]
    assert cited["cited"] is True
    assert set(cited) >= {"item_id", "path", "page", "bbox", "modality", "score", "thumbnail"}
    assert Path(cited["path"]).is_file()


@pytest.mark.parametrize("mode", ["--no-stream", "--stream", "--json"])
def test_ask_labels_the_extracted_answer_that_replaces_a_failed_one(
    openai_stub: StubServer, library: Path, mode: str
) -> None:
    reply = "The source of the source of the source of the source of the source of the source."
    model = openai_stub.unique("tagged-reply") + ":" + reply
    result = ask(openai_stub.base_url, model, QUESTION, "-k", "4", mode, quality_gate="true")

    assert result.exit_code == 0, result.output
    if mode == "--json":
        payload = json.loads(result.stdout)
        assert payload["fallback"] == "extractive" and payload["rejected_answer"] == reply
        assert [i["check"] for i in payload["quality_issues"]] == ["repetition", "no_content"]
        assert payload["cited"] and payload["text"].startswith("- ")
        return
    answer, _, sources = result.stdout.partition("\nSources:\n")
    model_part, label, extracted = answer.partition(
        "failed the quality check; instead, sentences from the sources:"
    )
    assert label and model_part.strip() == (
        f"{reply}\n\nThe answer above" if mode == "--stream" else "The model's answer"
    )
    lines = extracted.strip().splitlines()
    assert 1 <= len(lines) <= 3 and all(line.startswith("- ") for line in lines)
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", extracted)}
    marked = {int(line.split()[0].strip("[]")) for line in source_lines(sources) if line.endswith(" cited")}
    assert cited and cited == marked
    assert "warning: the model's answer failed the quality check (repetition: " in result.stderr


def test_unreachable_generator_exits_3_and_still_prints_the_sources(
    closed_loopback_port: int, library: Path
) -> None:
    result = ask(f"http://127.0.0.1:{closed_loopback_port}/v1", "qwen2-vl", QUESTION, "-k", "3")

    assert result.exit_code == 3
    assert "error:" in result.stderr and "openai" in result.stderr and "cannot reach" in result.stderr
    assert f"127.0.0.1:{closed_loopback_port}" in result.stderr
    assert "Retrieved sources (no answer was generated):" in result.stdout
    assert len(source_lines(result.stdout)) == 3


def test_json_reports_the_failure_too(closed_loopback_port: int, library: Path) -> None:
    result = ask(f"http://127.0.0.1:{closed_loopback_port}/v1", "qwen2-vl", QUESTION, "-k", "2", "--json")
    assert result.exit_code == 3
    payload = json.loads(result.stdout)
    assert payload["text"] is None and "cannot reach" in payload["error"]
    assert len(payload["sources"]) == 2


def test_query_image_is_sent_after_the_question(openai_stub: StubServer, library: Path) -> None:
    model = openai_stub.unique("tagged-reply") + ":Like the cat photo [1]."
    photo = library / "photos" / "chelsea.jpg"
    result = ask(
        openai_stub.base_url, model, "Which photos look like this?", "--image", str(photo), "--no-stream"
    )

    assert result.exit_code == 0, result.output
    [record] = openai_stub.records(model)
    content = record["body"]["messages"][1]["content"]
    image_sources = sum(1 for line in source_lines(result.stdout) if "  image  " in line)
    assert [p["type"] for p in content].count("image_url") == min(image_sources, 3) + 1
    assert content[-2]["type"] == "image_url"
    assert "The question is about this image:" in content[-3]["text"]


def test_empty_question_is_refused(library: Path) -> None:
    result = CliRunner().invoke(app, ["ask", "  "])
    assert result.exit_code == 2 and "question is empty" in result.stderr


def test_eval_prints_the_whole_table_when_piped(library: Path, tmp_path: Path) -> None:
    """Piped or redirected, the report keeps every column whole (rich cuts tables to 80 columns)."""
    from mmrag.evaluation.qrels import write_qrels

    photos = sorted((library / "photos").iterdir())
    qrels = write_qrels(
        tmp_path / "qrels.jsonl",
        [{"id": p.stem, "text": f"a photo of {p.stem}", "relevant": [{"path": str(p)}]} for p in photos],
    )
    result = CliRunner().invoke(app, ["eval", str(qrels)])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "ranking" in line)
    for column in ("queries", "R@1", "R@5", "R@10", "MRR", "nDCG@10", "p50 ms", "p95 ms"):
        assert f" {column} " in header, header
    rows = {line.split("│")[1].strip(): line.split("│")[2:] for line in lines if line.count("│") > 9}
    assert {"fused", "clip", "clip.image", "lexical"} <= set(rows), sorted(rows)
    assert all(cells[0].strip() == str(len(photos)) for cells in rows.values())
