"""The quality gate and its extractive fallback (mmrag.generate.quality), on real SmolLM2-135M answers kept
as fixtures (tests/assets/smollm2_answers.json: the question, the sources the model was given, its reply,
and the checks it fails) and on constructed cases for each check. Pure functions: well under a second."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mmrag.generate.citations import check_reply
from mmrag.generate.quality import SourceText, check_answer, describe, extractive_answer

FIXTURES = Path(__file__).parent / "assets" / "smollm2_answers.json"
REAL = json.loads(FIXTURES.read_text(encoding="utf-8"))["answers"]

GNUPLOT = [
    SourceText(
        1,
        "The set terminal command tells gnuplot what kind of output to generate. Syntax: "
        "set terminal {<terminal-type> | push | pop}",
        "/docs/gnuplot.pdf",
    ),
    SourceText(2, "The pngcairo terminal device generates output in png. set terminal pngcairo", "/d/g.pdf"),
    SourceText(
        3, "Contents . . . . . . . . . . . . . . . . 21\nTerminal types . . . . . . . . 224", "/d/g.pdf"
    ),
]
PHOTOS = [
    SourceText(
        1, "Chelsea the cat. An example with texture, prominent edges in the fur.", "/docs/chelsea.md"
    ),
    SourceText(2, "a photo of an Egyptian cat, tiger cat, tabby", "/photos/chelsea.jpg"),
    SourceText(3, "Coffee cup. This photograph is courtesy of Pikolo Espresso Bar.", "/docs/coffee.md"),
]


def sources_of(case: dict[str, Any]) -> list[SourceText]:
    return [SourceText(s["number"], s["text"], s["path"]) for s in case["sources"]]


@pytest.mark.parametrize("case", REAL, ids=[case["id"] for case in REAL])
def test_real_smollm2_answers_get_the_recorded_verdict(case: dict[str, Any]) -> None:
    sources = sources_of(case)
    text = check_reply(case["reply"], [s.number for s in sources]).text
    report = check_answer(text, case["question"], sources)
    assert report.checks == case["fails"], describe(report.failed)
    assert all(failed.reason for failed in report.failed)


@pytest.mark.parametrize("case", [c for c in REAL if c["fails"]], ids=[c["id"] for c in REAL if c["fails"]])
def test_the_fallback_for_a_real_failure_quotes_its_sources_with_their_numbers(case: dict[str, Any]) -> None:
    sources = sources_of(case)
    by_number = {s.number: " ".join(s.text.split()) for s in sources}
    extracted = extractive_answer(case["question"], sources)
    lines = extracted.text.splitlines()
    assert 1 <= len(lines) <= 3 and extracted.cited
    for line in lines:
        match = re.fullmatch(r"- (.+?) ((?:\[\d+\])+)([.!?;:]*)", line)
        assert match, line
        sentence = match[1] + match[3]
        numbers = [int(n) for n in re.findall(r"\d+", match[2])]
        assert all(sentence.rstrip(" …") in by_number[n] for n in numbers), (line, numbers)
    assert check_answer(extracted.text, case["question"], sources).passed


# --- each check on constructed answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "fails"),
    [
        ("The source of the photo is [1].", ["no_content"]),
        ("The source above is [2].", ["no_content"]),
        ("Yes [1].", []),  # short, but an answer
        ("Chelsea the cat has prominent edges in her fur [1].", []),
    ],
)
def test_an_answer_that_says_nothing_fails(answer: str, fails: list[str]) -> None:
    assert check_answer(answer, "Which photo shows a cat?", PHOTOS).checks == fails


@pytest.mark.parametrize(
    "answer",
    [
        "Answer from the sources above and cite them by number, like [1].",
        'Here it is: <source id="1" document="chelsea.md" modality="text"> Chelsea the cat [1]. </source>',
    ],
)
def test_an_answer_that_echoes_the_prompt_fails(answer: str) -> None:
    assert "prompt_echo" in check_answer(answer, "Which photo shows a cat?", PHOTOS).checks


def test_declining_in_the_prompt_s_own_words_is_no_echo() -> None:
    answer = "The sources do not contain the answer, so I say that they do not."
    assert check_answer(answer, "Which photo shows a dog?", PHOTOS).passed


def test_a_looping_answer_fails_and_a_varied_one_passes() -> None:
    loop = "The source of the source of the source of the source of the source of the source [1]."
    report = check_answer(loop, "Which photo shows a cat?", PHOTOS)
    assert report.checks == ["repetition", "no_content"]
    assert "'the source of'" in report.reason_of("repetition")
    # Sentences that differ only in a number are one sentence said again.
    numbered = " ".join(f"The cat in photo {n} has a tabby coat [2]." for n in range(1, 6))
    assert "repetition" in check_answer(numbered, "Which photo shows a cat?", PHOTOS).checks
    varied = (
        "Chelsea the cat is a tabby [2]. Her fur shows prominent edges and texture [1]. The coffee cup "
        "photograph is courtesy of Pikolo Espresso Bar [3]."
    )
    assert check_answer(varied, "Which photo shows a cat?", PHOTOS).passed


def test_words_found_in_no_source_fail_and_the_question_s_words_are_free() -> None:
    invented = "The cat is a Siamese kitten sleeping on a velvet cushion in Paris [1]."
    report = check_answer(invented, "Which photo shows a cat?", PHOTOS)
    assert report.checks == ["unsupported"]
    assert "siamese" in report.reason_of("unsupported") and "cat" not in report.reason_of("unsupported")
    # One unknown word among known ones is a paraphrase, not an invention.
    assert check_answer("Chelsea the tabby cat is lovely [2].", "Which photo shows a cat?", PHOTOS).passed


@pytest.mark.parametrize(
    ("answer", "invented"),
    [
        ("To plot, write:\n#include <stdio.h>\nint main() { plot(); }", "#include <stdio.h>"),
        ("Use the gnuplot_set_terminal function [1].", "gnuplot_set_terminal"),
        ("The terminal is chosen by `set output 'plot.svg'` [1].", "set output 'plot.svg'"),
        ("Call terminal.render(png) to draw [2].", "terminal.render(png)"),
    ],
)
def test_code_that_no_source_holds_fails(answer: str, invented: str) -> None:
    report = check_answer(answer, "How do I choose the terminal?", GNUPLOT)
    assert "invented_code" in report.checks
    assert invented in report.reason_of("invented_code")


@pytest.mark.parametrize(
    "answer",
    [
        "Write `set terminal pngcairo` to get png output [2].",  # verbatim from source 2
        "The command set terminal push saves the terminal [1].",  # words of the sources, recombined
        "Pick one terminal type, e.g. pngcairo [2].",  # "e.g." is no identifier
    ],
)
def test_code_made_of_the_sources_passes(answer: str) -> None:
    assert "invented_code" not in check_answer(answer, "How do I choose the terminal?", GNUPLOT).checks


def test_citations_of_sources_unrelated_to_the_sentence_and_question_fail() -> None:
    question = "Which photo shows a cat?"
    miscited = "The picture shows a dahlia in orange [3]."  # source 3 is the coffee cup
    assert check_answer(miscited, question, PHOTOS).checks == ["unsupported", "miscited"]
    # A source on the question's topic is a fair citation even when the sentence paraphrases it.
    assert check_answer("A striped animal is shown [2].", question, PHOTOS).checks == ["unsupported"]
    # One wrong citation among right ones is not "all invented".
    half = "Chelsea the cat is a tabby [2]. The cup of coffee is from Pikolo [1]."
    assert "miscited" not in check_answer(half, "What do the photos show?", PHOTOS).checks
    wrong = "Chelsea the cat is a tabby [3]. The cup of coffee is from Pikolo [1]."
    assert "miscited" in check_answer(wrong, "What do the photos show?", PHOTOS).checks


def test_an_uncited_answer_fails_only_when_no_sentence_matches_a_source() -> None:
    question = "Which photo shows a cat?"
    assert check_answer("Chelsea the cat has prominent edges in her fur.", question, PHOTOS).passed
    report = check_answer("It is a wonderful and well known picture.", question, PHOTOS)
    assert "uncited" in report.checks


@pytest.mark.parametrize(
    "answer",
    [
        "The sources do not say which photo shows a dog.",
        "I cannot find information about dogs in the sources.",
    ],
)
def test_declining_is_honest(answer: str) -> None:
    report = check_answer(answer, "Which photo shows a dog?", PHOTOS)
    assert report.passed and report.declined


def test_without_sources_only_the_text_itself_is_judged() -> None:
    assert check_answer("Chelsea the cat is asleep.", "Which photo shows a cat?", []).passed
    loop = "the cat and the cat and the cat and the cat and the cat and the cat"
    assert check_answer(loop, "Which photo shows a cat?", []).checks == ["repetition"]


# --- the extractive answer -------------------------------------------------------------------------------


def test_extractive_answer_takes_the_sentences_sharing_most_words_with_the_question() -> None:
    extracted = extractive_answer("Who took the coffee cup photograph?", PHOTOS)
    assert extracted.matched
    assert extracted.text.splitlines() == [
        "- Coffee cup [3].",
        "- This photograph is courtesy of Pikolo Espresso Bar [3].",
    ]
    assert extracted.cited == [3]


def test_extractive_answer_cites_every_source_of_a_repeated_sentence_and_skips_headings() -> None:
    sources = [
        SourceText(1, "a photo of an espresso", "/photos/coffee.jpg"),
        SourceText(2, "skimage.data.coffee > Notes\nCoffee cup espresso, see [1]_ for more.", "/docs/c.md"),
        SourceText(3, "a photo of an espresso", "/pdfs/figures.pdf"),
    ]
    extracted = extractive_answer("Which photo shows an espresso?", sources)
    assert extracted.text.splitlines() == [
        "- a photo of an espresso [1][3]",
        "- Coffee cup espresso, see for more [2].",
    ]
    assert extracted.cited == [1, 3, 2]  # the source's own "[1]_" footnote became no citation


def test_extractive_answer_without_a_shared_word_shows_how_the_top_sources_begin() -> None:
    extracted = extractive_answer("Tell me about zebras?", PHOTOS, max_sentences=2)
    assert not extracted.matched
    assert extracted.text.splitlines() == [  # "Chelsea the cat." is too short to stand for its source
        "- An example with texture, prominent edges in the fur [1].",
        "- a photo of an Egyptian cat, tiger cat, tabby [2]",
    ]


def test_extractive_answer_skips_tables_of_contents_and_cuts_long_sentences() -> None:
    long = "Terminal " + "output options are many and " * 30 + "end."
    sources = [GNUPLOT[2], SourceText(4, long, "/d/g.pdf")]
    extracted = extractive_answer("Which terminal types are there?", sources)
    [line] = extracted.text.splitlines()
    assert line.startswith("- Terminal output options") and line.endswith(" … [4]") and len(line) < 320


def test_extractive_answer_is_empty_when_no_source_holds_text() -> None:
    extracted = extractive_answer("Which photo shows a cat?", [SourceText(1, "", "/photos/cat.jpg")])
    assert extracted.text == "" and extracted.cited == []
