"""Is a generated answer fit to show? Checks for what small models write when they fail, and the extractive
answer shown in its place.

`check_answer` runs each check on the answer as it would be shown (citations already checked) against the
sources the model was given. A failed check has a stable name, for counting, and a reason, for people:

- `no_content`: nothing is left once citations and filler words ("source", "photo", "above") are taken
  away: "The source of the photo is [1]." (an answer that starts with yes or no is exempt);
- `prompt_echo`: it repeats the prompt's framing instead of answering: a `<source id="1" ...>` tag, or six
  words in a row of the instructions ("cite them by number, like [1]");
- `repetition`: one run of words comes back again and again: "The source of the source of the source of",
  or sentences that differ in a number only. Sentences said twice word for word are already removed by
  `check_reply`, so what is left here is the looping that survived that;
- `unsupported`: most of the words the answer adds to the question occur in no source;
- `invented_code`: code or names (an `#include` line, a call `f(x)`, `a_b`, `coin.png`, text in
  backticks) holding a word that no source contains;
- `miscited`: in most of the sentences the model cited, the cited sources share no word with the sentence
  or the question;
- `uncited`: the model cited nothing and no sentence of its answer can be matched to a source.

An answer that declines ("the sources do not say") is honest, and only the repetition and code checks
apply to it. The checks compare words, so they are cheap (about 12 ms per answer on a slow CPU) and
English-centred: they judge honesty (is it in the sources?), not whether the answer is right.

`extractive_answer` is the fallback: the sentences of the sources that share the most words with the
question, each cited with its real source number.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmrag.generate.citations import (
    CheckedReply,
    attribute_sentences,
    citation_numbers,
    content_words,
    split_sentences,
    strip_citations,
)
from mmrag.generate.prompt import ANSWER_INSTRUCTION, SOURCES_INTRO, SYSTEM_PROMPT

# Words that say nothing about the sources' content, on top of citations.py's stopwords (stems, as
# content_words returns them).
_FILLER = frozenset(
    {
        "above",
        "below",
        "cited",
        "cite",
        "number",
        "numbered",
        "file",
        "show",
        "shown",
        "question",
        "answer",
        "provided",
        "given",
        "following",
        "mentioned",
        "information",
        "text",
        "based",
        "contain",
        "containing",
        "described",
        "describe",
        "description",
        "according",
        "here",
        "like",
        "example",
        "automatic",
        "passage",
    }
)
# What the model is told, not what the sources say: six of its words in a row, or our own tags, in a reply
# mean the model is echoing its prompt. Rule 3 ("if the sources do not contain the answer, say that they do
# not") is left out: a reply that declines may well word it the same way.
_ECHO_WORDS = 6
_ECHO_TAG = re.compile(r"</?\s*source\b[^>]*>", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_DECLINES = re.compile(
    r"\b(?:do(?:es)?n['\u2019]?t|do(?:es)? not|did not|cannot|can['\u2019]?t|no)\s+"
    r"(?:\w+\s+){0,3}?(?:contain|say|mention|include|provide|answer|information|find|know|tell)",
    re.IGNORECASE,
)
_DECLINE_MAX_WORDS = 40

_REPEAT_NGRAM = 3
_REPEAT_MIN_NGRAMS = 8  # shorter answers are not judged: a 6-word answer can hardly loop
_REPEAT_MAX_SHARE = 0.3  # share of word trigrams that are repeats of an earlier one
_UNSUPPORTED_MIN_WORDS = 2  # fewer unsupported words than this is never a failure
_SUPPORTED_MIN_SHARE = 0.5

# Code-like spans: fenced blocks, `inline`, preprocessor lines, calls f(x), snake_case, dotted.names.
_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|$)", re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_CODE_LINE = re.compile(r"^\s*(?:#\s*(?:include|define|import|pragma)\b.*|.*[;{}]\s*)$", re.MULTILINE)
_IDENTIFIER = re.compile(
    r"(?<![\w.])(?:[A-Za-z_][\w.]*\([^()\n]{0,40}\)|[A-Za-z]\w*_\w+|[A-Za-z]\w*(?:\.[A-Za-z]\w*)+)(?![\w(])"
)
_TOKEN = re.compile(r"[A-Za-z]\w+")
_FOOTNOTE = re.compile(r"\s*\[\d+\]_")  # reStructuredText's "see [1]_"

_MAX_EXTRACT_CHARS = 300
_MIN_EXTRACT_WORDS = 2  # "Coffee cup." is a sentence
_MIN_OPENING_WORDS = 4
_MIN_LETTER_SHARE = 0.6  # "(512, 512, 3) uint8" is no sentence to quote
_MAX_NUMBER_SHARE = 0.3  # more numbers than that: an index ("start, 56 startup, 36"), not a sentence
_NUMBER = re.compile(r"\(?[\d.,:;-]+\)?[.,;:]?")
_SOURCE_BREAK = re.compile(r"(?<=[.!?])\s+")
# Not sentence ends: "e.g.", "(p. 31)", "J. Smith".
_ABBREVIATION = re.compile(r"(?:\b(?i:e\.g|i\.e|cf|vs|etc|p|pp|fig|no|vol|ch|sec)\.|\b[A-Z]\.)$")
_DOT_LEADERS = re.compile(r"(?:\.\s?){6,}")  # "Terminals . . . . . . 224": a table of contents or an index


@dataclass(frozen=True)
class FailedCheck:
    check: str  # no_content, prompt_echo, repetition, unsupported, invented_code, miscited, uncited
    reason: str


@dataclass(frozen=True)
class SourceText:
    """What the model was given of one source: its number, text, and the file it came from."""

    number: int
    text: str
    path: str = ""

    @property
    def file_name(self) -> str:
        return Path(self.path).name if self.path else ""

    @property
    def readable(self) -> str:
        """The text plus the file name: the model sees both, so both may be quoted."""
        return f"{self.text}\n{self.file_name}"


@dataclass
class QualityReport:
    failed: list[FailedCheck] = field(default_factory=list)
    declined: bool = False  # the answer says the sources do not hold the answer

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def checks(self) -> list[str]:
        return [failed.check for failed in self.failed]

    def reason_of(self, check: str) -> str:
        return next((failed.reason for failed in self.failed if failed.check == check), "")


def check_answer(text: str, question: str, sources: Sequence[SourceText]) -> QualityReport:
    """Run every check on `text` (an answer whose citations point to `sources` by number)."""
    report = QualityReport()
    prose = strip_citations(text)
    report.declined = bool(_DECLINES.search(prose)) and len(prose.split()) <= _DECLINE_MAX_WORDS
    for found in (_repetition(prose), _prompt_echo(prose), _invented_code(text, sources)):
        if found is not None:
            report.failed.append(found)
    if report.declined:
        return report
    words = content_words(prose) - _FILLER
    if not words and not _YES_NO.match(prose):
        report.failed.append(FailedCheck("no_content", "the answer says nothing beyond filler words"))
        return report
    if not sources:
        return report
    for check in (_unsupported, _miscited, _uncited):
        found = check(text, question, sources)
        if found is not None:
            report.failed.append(found)
    return report


@dataclass
class Extract(CheckedReply):
    matched: bool = True  # False: no sentence shares a word with the question; these are how sources begin


def extractive_answer(question: str, sources: Sequence[SourceText], max_sentences: int = 3) -> Extract:
    """Up to `max_sentences` sentences of the sources that share the most words with the question, best
    first, one per line, each cited by its source's number. When no sentence shares a word with the
    question, the first sentence of each of the best-ranked sources (`matched` False). Empty when no
    source holds text."""
    asked = content_words(question) - _FILLER
    found: list[tuple[int, int, str, int, set[str]]] = []  # (rank, position, sentence, number, shared words)
    openings: list[tuple[float, int, int, str, int]] = []  # each source's first sentence of some length
    for rank, source in enumerate(sources):
        sentences = _extractable_sentences(source)
        for position, sentence in enumerate(sentences):
            found.append((rank, position, sentence, source.number, asked & content_words(sentence)))
        # A chunk may open mid-sentence ("Station, FL."): its first few words say little on their own.
        opening = next((s for s in sentences if len(s.split()) >= _MIN_OPENING_WORDS), None)
        if opening is not None:
            openings.append((0.0, rank, 0, opening, source.number))
    # A shared word counts for less the more sentences hold it: "gnuplot" in a question about the gnuplot
    # manual is on every page of it and picks out nothing.
    holding = Counter(word for *_, shared in found for word in shared)
    weight = {word: math.log(1 + len(found) / count) for word, count in holding.items()}
    chosen = sorted(
        (-sum(weight[w] for w in shared), rank, position, sentence, number)
        for rank, position, sentence, number, shared in found
        if shared
    )
    matched = bool(chosen)
    if not matched:
        chosen = openings
    lines: list[str] = []
    numbers: list[list[int]] = []
    keys: list[str] = []
    for _, _, _, sentence, number in chosen:
        key = " ".join(sentence.lower().split())
        if key in keys:  # the same sentence in two sources (a photo and the PDF page showing it)
            cited = numbers[keys.index(key)]
            if number not in cited:
                cited.append(number)
            continue
        if len(lines) == max_sentences:
            continue
        keys.append(key)
        lines.append(sentence)
        numbers.append([number])
    rendered = [_cite(sentence, cited) for sentence, cited in zip(lines, numbers, strict=True)]
    order = list(dict.fromkeys(n for cited in numbers for n in cited))
    return Extract("\n".join(f"- {line}" for line in rendered), order, matched=matched)


def describe(failed: Sequence[FailedCheck]) -> str:
    return "; ".join(f"{f.check}: {f.reason}" for f in failed)


def _repetition(prose: str) -> FailedCheck | None:
    # Digits are one symbol, so "source cited by number 2 is" and "... number 3 is" count as the same.
    spelled = re.findall(r"\w+", prose.lower())
    words = [re.sub(r"\d+", "0", w) for w in spelled]
    grams = [tuple(words[i : i + _REPEAT_NGRAM]) for i in range(len(words) - _REPEAT_NGRAM + 1)]
    if len(grams) < _REPEAT_MIN_NGRAMS:
        return None
    counts = Counter(grams)
    repeats = len(grams) - len(counts)
    if repeats / len(grams) <= _REPEAT_MAX_SHARE:
        return None
    gram, times = counts.most_common(1)[0]
    first = grams.index(gram)
    shown = " ".join(spelled[first : first + _REPEAT_NGRAM])
    return FailedCheck(
        "repetition",
        f"{repeats} of its {len(grams)} word triples repeat an earlier one ('{shown}' {times} times)",
    )


def _prompt_echo(prose: str) -> FailedCheck | None:
    tags = _ECHO_TAG.findall(prose)
    if tags:
        return FailedCheck("prompt_echo", f"it repeats the prompt's source tags ({tags[0]!r})")
    words = re.findall(r"\w+", prose.lower())
    echoed = next(
        (
            i
            for i in range(len(words) - _ECHO_WORDS + 1)
            if tuple(words[i : i + _ECHO_WORDS]) in _instruction_runs()
        ),
        None,
    )
    if echoed is None:
        return None
    return FailedCheck(
        "prompt_echo", f"it repeats the instructions: '{' '.join(words[echoed : echoed + _ECHO_WORDS])}'"
    )


@functools.cache
def _instruction_runs() -> frozenset[tuple[str, ...]]:
    told = "\n".join(
        line
        for line in (SYSTEM_PROMPT + "\n" + SOURCES_INTRO + "\n" + ANSWER_INSTRUCTION).splitlines()
        if not line.startswith("3.")
    )
    words = re.findall(r"\w+", told.lower())
    return frozenset(tuple(words[i : i + _ECHO_WORDS]) for i in range(len(words) - _ECHO_WORDS + 1))


def _unsupported(text: str, question: str, sources: Sequence[SourceText]) -> FailedCheck | None:
    added = content_words(strip_citations(text)) - content_words(question) - _FILLER
    known = content_words("\n".join(s.readable for s in sources))
    missing = added - known
    if len(missing) < _UNSUPPORTED_MIN_WORDS or len(added - missing) >= _SUPPORTED_MIN_SHARE * len(added):
        return None
    # As the answer spells them ("previous", not the stem "previou"), in order of appearance.
    spelled = [w for w in dict.fromkeys(re.findall(r"\w+", text.lower())) if content_words(w) & missing]
    return FailedCheck(
        "unsupported",
        f"{len(missing)} of the {len(added)} words it adds to the question are in no source: "
        + ", ".join(spelled[:8])
        + (", ..." if len(spelled) > 8 else ""),
    )


def _invented_code(text: str, sources: Sequence[SourceText]) -> FailedCheck | None:
    corpus = "\n".join(s.readable for s in sources)
    flat = " ".join(corpus.lower().split())
    known = {token.lower() for token in _TOKEN.findall(corpus)}
    invented: list[str] = []
    for fragment in _code_fragments(strip_citations(text)):
        shown = " ".join(fragment.split())
        if not shown or shown.lower() in flat or shown in invented:
            continue
        if any(token.lower() not in known for token in _TOKEN.findall(fragment)):
            invented.append(shown)
    if not invented:
        return None
    listed = ", ".join(repr(f if len(f) <= 60 else f[:57] + "...") for f in invented[:4])
    return FailedCheck(
        "invented_code",
        f"{len(invented)} code line(s) or name(s) hold words no source contains: {listed}"
        + (", ..." if len(invented) > 4 else ""),
    )


def _code_fragments(text: str) -> list[str]:
    fragments: list[str] = list(_FENCE.findall(text))
    outside = _FENCE.sub(" ", text)
    fragments += _INLINE.findall(outside)
    outside = _INLINE.sub(" ", outside)
    fragments += [line.strip() for line in _CODE_LINE.findall(outside)]
    fragments += _IDENTIFIER.findall(outside)
    return fragments


def _miscited(text: str, question: str, sources: Sequence[SourceText]) -> FailedCheck | None:
    """A citation is taken as invented when the source it names shares no word with the sentence citing
    it, nor with the question (a paraphrase, "rocket" for "Falcon 9", still cites a source on the topic)."""
    words = {s.number: content_words(s.readable) for s in sources}
    asked = content_words(question) - _FILLER
    judged = unsupported = 0
    for sentence in split_sentences(text):
        cited = [n for n in dict.fromkeys(citation_numbers(sentence)) if n in words]
        claim = content_words(strip_citations(sentence)) - _FILLER
        if not cited or not claim:
            continue
        judged += 1
        if not any((claim | asked) & words[n] for n in cited):
            unsupported += 1
    if not judged or unsupported * 2 <= judged:
        return None
    return FailedCheck(
        "miscited",
        f"in {unsupported} of its {judged} cited sentences, the cited sources share no word with the "
        "sentence or the question",
    )


def _uncited(text: str, question: str, sources: Sequence[SourceText]) -> FailedCheck | None:
    if citation_numbers(text):
        return None
    attributed = attribute_sentences(text, question, [(s.number, s.readable) for s in sources])
    if attributed.cited:
        return None
    return FailedCheck("uncited", "it cites no source, and none of its sentences matches one")


def _extractable_sentences(source: SourceText) -> list[str]:
    text = source.text
    if _DOT_LEADERS.search(text):
        return []
    if Path(source.path).suffix.lower() in {".md", ".markdown"} and "\n" in text:
        text = text.split("\n", 1)[1]  # a Markdown chunk opens with its headings ("Guide > Install")
    # "[2]" in a source is its own footnote, not one of our citations: it must not become one.
    text = strip_citations(_FOOTNOTE.sub("", text))
    sentences = []
    for sentence in _source_sentences(text):
        if len(re.findall(r"[^\W\d_]+", sentence)) < _MIN_EXTRACT_WORDS:
            continue
        visible = [ch for ch in sentence if not ch.isspace()]
        if sum(ch.isalpha() for ch in visible) < _MIN_LETTER_SHARE * len(visible):
            continue
        tokens = sentence.split()
        if sum(bool(_NUMBER.fullmatch(t)) for t in tokens) > _MAX_NUMBER_SHARE * len(tokens):
            continue  # "start, 56 start up, 56 starting values, 97": an index, or a shape "(512, 512, 3)"
        if len(sentence) > _MAX_EXTRACT_CHARS:
            cut = sentence[:_MAX_EXTRACT_CHARS]
            sentence = cut[: cut.rfind(" ")].rstrip() + " …" if " " in cut else cut + " …"
        sentences.append(sentence)
    return sentences


def _source_sentences(text: str) -> list[str]:
    """Sentences of a source, not broken after "e.g.", "i.e." or "(p. 31)"."""
    sentences: list[str] = []
    for line in text.splitlines():
        for piece in _SOURCE_BREAK.split(line):
            piece = " ".join(piece.split())
            if sentences and sentences[-1] and _ABBREVIATION.search(sentences[-1]):
                sentences[-1] += " " + piece
            elif piece:
                sentences.append(piece)
        sentences.append("")  # a line break ends a sentence
    return [s for s in sentences if s]


def _cite(sentence: str, numbers: list[int]) -> str:
    end = len(sentence)
    while end > 0 and sentence[end - 1] in ".!?;:":
        end -= 1
    return f"{sentence[:end]} {''.join(f'[{n}]' for n in numbers)}{sentence[end:]}"
