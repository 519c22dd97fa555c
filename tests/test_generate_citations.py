"""Citation parsing and validation, reply cleaning, streaming equivalence, and the attribution fallback."""

from __future__ import annotations

import random

import pytest

from mmrag.generate.citations import (
    StreamCleaner,
    attribute_sentences,
    check_reply,
    citation_numbers,
    has_answer_text,
    repeats_a_sentence,
)

VALID = {1, 2, 3}


@pytest.mark.parametrize(
    ("reply", "text", "cited", "dropped"),
    [
        ("The rocket is on the pad [2].", "The rocket is on the pad [2].", [2], []),
        ("A cat [1, 3] sleeps.", "A cat [1][3] sleeps.", [1, 3], []),
        ("A cat [1-3] sleeps.", "A cat [1][2][3] sleeps.", [1, 2, 3], []),
        ("A cat [Source 2] and [sources 1 and 3].", "A cat [2] and [1][3].", [2, 1, 3], []),
        ("A cat [1][1] [1].", "A cat [1] [1].", [1], []),
        ("A cat sleeps [7].", "A cat sleeps.", [], [7]),
        ("A cat [2, 9] sleeps [0].", "A cat [2] sleeps.", [2], [9, 0]),
        ("[4] Nothing valid here [5]!", "Nothing valid here!", [], [4, 5]),
        # Not citations: a span of years, a markdown link, a word in brackets.
        (
            "Built [1990-2024], see [1](http://x), [note].",
            "Built [1990-2024], see [1](http://x), [note].",
            [],
            [],
        ),
        ("<think>maybe [9] or [1]</think>The answer is blue [3].", "The answer is blue [3].", [3], []),
    ],
)
def test_citations_are_normalised_and_those_to_no_source_dropped(
    reply: str, text: str, cited: list[int], dropped: list[int]
) -> None:
    checked = check_reply(reply, VALID)
    assert (checked.text, checked.cited, checked.dropped) == (text, cited, dropped)


def test_citation_numbers_lists_every_cited_number() -> None:
    assert citation_numbers("a [1] b [2, 5] c [3-4] d [Source 9] [1990-2024]") == [1, 2, 5, 3, 4, 9]


def test_repeated_sentences_are_dropped_with_their_citations() -> None:
    reply = "The rocket is on the pad [1].\nThe rocket is on the pad [2].\nIt is a Falcon 9 [3]. It is tall."
    checked = check_reply(reply, VALID)
    assert checked.text == "The rocket is on the pad [1].\nIt is a Falcon 9 [3]. It is tall."
    assert checked.cited == [1, 3]


def test_repeat_detection_waits_for_the_sentence_to_end() -> None:
    assert not repeats_a_sentence("The rocket is on the pad. The rocket is on the p")
    assert not repeats_a_sentence("The rocket is on the pad. The rocket is on the pad.")
    assert repeats_a_sentence("The rocket is on the pad. The rocket is on the pad. ")
    assert repeats_a_sentence("The rocket is on the pad [1]\nthe rocket is on the pad\n")
    assert not repeats_a_sentence("Yes. Yes. Yes. ")  # too short to call a loop


@pytest.mark.parametrize("reply", ["", "   ", "[1]", "[1][2].", " [9] ", "<think>the answer is 4</think>"])
def test_replies_without_answer_text_are_recognised(reply: str) -> None:
    assert not has_answer_text(check_reply(reply, VALID).text)


def test_a_real_answer_has_text() -> None:
    assert has_answer_text(check_reply("4 [1].", VALID).text)


STREAMED_REPLY = (
    "<think>The user asks about [9] things</think>  The cat [1, 9] sleeps on the sofa [9]. "
    "The rocket [Source 2][2-4] stands on the pad.\nThe cat [1] sleeps on the sofa.\n\n"
    "Read more at [1](http://example.org) and [4]. Built [1990-2024] last"
)


@pytest.mark.parametrize("seed", range(25))
def test_streamed_pieces_join_to_the_checked_reply(seed: int) -> None:
    rng = random.Random(seed)
    cleaner = StreamCleaner(VALID)
    shown: list[str] = []
    position = 0
    while position < len(STREAMED_REPLY):
        size = rng.randint(1, 7)
        shown.append(cleaner.feed(STREAMED_REPLY[position : position + size]))
        position += size
    shown.append(cleaner.finish())
    expected = check_reply(STREAMED_REPLY, VALID).text
    assert "".join(shown) == expected
    assert "[9]" not in expected and "think" not in expected and expected.count("sleeps on the sofa") == 1


def test_streaming_shows_whole_sentences_before_the_end() -> None:
    cleaner = StreamCleaner(VALID)
    assert cleaner.feed("The cat sleeps [1]") == ""
    assert cleaner.feed(". The dog") == "The cat sleeps [1]."
    assert cleaner.finish() == " The dog"


def test_attribution_cites_the_source_holding_the_new_words() -> None:
    sources = [
        (1, "a photo of a tabby cat on a sofa chelsea"),
        (2, "the Falcon 9 rocket stands on the launch pad"),
    ]
    result = attribute_sentences(
        "The animal in the photos is a cat. The capital of France is Paris.\nA rocket stands on the pad!",
        "What animal is in the photos?",
        sources,
    )
    assert result.text == (
        "The animal in the photos is a cat [1]. The capital of France is Paris.\n"
        "A rocket stands on the pad [2]!"
    )
    assert result.cited == [1, 2]


def test_attribution_ignores_words_that_only_echo_the_question() -> None:
    sources = [(1, "the launch pad at cape canaveral")]
    result = attribute_sentences(
        "What stands on the launch pad is unknown.", "What stands on the launch pad?", sources
    )
    assert result.cited == [] and result.text == "What stands on the launch pad is unknown."


def test_attribution_prefers_the_better_ranked_source_on_a_tie() -> None:
    sources = [(1, "a cup of coffee"), (2, "coffee cup on a table")]
    assert attribute_sentences("It is coffee.", "What is it?", sources).cited == [1]
