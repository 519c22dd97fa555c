"""Citations in a model's reply: find them, keep those that point to a source, drop the rest.

Models cite as "[2]", "[1, 3]", "[1-3]", "[Source 2]" or "[1][2]"; all become "[1][2]"-style brackets of
valid numbers. A bracket whose numbers all point to no source is removed with the space before it.
Reasoning models' "<think>...</think>" blocks are not part of the answer and are removed too.

`attribute_sentences` is the fallback for small models that ignore the instruction to cite: each sentence
of the reply is matched to the source that contains most of its new words (words not already in the
question). Callers must say that such citations were added by mmrag, not written by the model.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

_DASHES = "-\u2013"  # hyphen, en dash
_NUMBER_LIST = rf"\d{{1,4}}(?:\s*(?:,|;|[{_DASHES}]|and)\s*(?:sources?\s*)?\d{{1,4}})*"
_CITATION = re.compile(
    rf"\[\s*(?:(?:sources?|refs?|docs?)\.?\s*#?\s*)?({_NUMBER_LIST})\s*\](?!\()", re.IGNORECASE
)
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_MAX_RANGE = 20  # "[1-3]" is a range; "[1-2024]" is not a range of citations
_OPEN_BRACKET_HOLD = 32  # a "[" this close to the end of a stream may still become a citation
# Between sentences (after . ! ?) or lines; the split keeps the separators at odd positions.
_SENTENCE_BREAK = re.compile(r"((?<=[.!?])[ \t]+|[ \t]*\n\s*)")
_MIN_REPEAT_CHARS = 12


@dataclass
class CheckedReply:
    text: str
    cited: list[int] = field(default_factory=list)  # valid source numbers, in order of first citation
    dropped: list[int] = field(default_factory=list)  # numbers cited that point to no source


def citation_numbers(text: str) -> list[int]:
    """Every number cited in `text`, valid or not, in order, repeats included."""
    return [n for match in _CITATION.finditer(text) for n in _expand(match.group(1)) or []]


def strip_thinking(text: str) -> str:
    return _THINKING.sub("", text)


def check_reply(reply: str, valid: Collection[int]) -> CheckedReply:
    """The reply without thinking blocks, with only citations of `valid` source numbers, and without
    sentences it already said (small models loop on a sentence until they run out of tokens)."""
    return _clean(reply, set(valid), final=True)


def repeats_a_sentence(text: str) -> bool:
    """True once a complete sentence or line occurs a second time: a greedy decoder caught in a loop."""
    seen: set[str] = set()
    pieces = _SENTENCE_BREAK.split(text)
    for sentence in pieces[0:-1:2]:  # the last piece may be unfinished
        key = _sentence_key(sentence)
        if key in seen:
            return True
        if key:
            seen.add(key)
    return False


def strip_citations(text: str) -> str:
    """`text` without its citation brackets."""
    return _CITATION.sub("", text)


def split_sentences(text: str) -> list[str]:
    """The sentences and lines of `text`, stripped, empty ones left out."""
    return [piece.strip() for piece in _SENTENCE_BREAK.split(text)[0::2] if piece.strip()]


def has_answer_text(text: str) -> bool:
    """False for replies that are empty once citations and punctuation are taken away."""
    return any(ch.isalnum() for ch in _CITATION.sub("", text))


class StreamCleaner:
    """Cleans a streamed reply piece by piece so the pieces join to exactly `check_reply(...).text`.

    Text that may still turn into something to remove (an unclosed "[" near the end, an open <think>
    block, trailing spaces) is held back until the next piece settles it.
    """

    def __init__(self, valid: Collection[int]) -> None:
        self.valid = set(valid)
        self.raw = ""
        self.emitted = ""

    def feed(self, piece: str) -> str:
        self.raw += piece
        end = _settled_end(self.raw)
        # Whole sentences only: a sentence the model already said is dropped, and that is known at its end.
        breaks = [match.start() for match in _SENTENCE_BREAK.finditer(self.raw, 0, end)]
        if not breaks:
            return ""
        return self._emit(_clean(self.raw[: breaks[-1]], self.valid, final=False).text)

    def finish(self) -> str:
        return self._emit(check_reply(self.raw, self.valid).text)

    def _emit(self, cleaned: str) -> str:
        if not cleaned.startswith(self.emitted):  # cannot take back what was shown; wait for the end
            return ""
        new = cleaned[len(self.emitted) :]
        self.emitted = cleaned
        return new


def attribute_sentences(
    text: str, question: str, sources: Sequence[tuple[int, str]], min_overlap: float = 0.5
) -> CheckedReply:
    """Append "[n]" to each sentence whose new words are mostly found in source n's text.

    `sources` are (number, text) pairs, best ranked first; ties go to the better ranked source.
    """
    asked = content_words(question)
    source_words = [(number, content_words(body)) for number, body in sources]
    pieces = re.split(r"((?<=[.!?])\s+|\n+)", text)
    cited: list[int] = []
    out: list[str] = []
    for piece in pieces:
        evidence = content_words(piece) - asked
        best_number, best_score = None, 0.0
        for number, words in source_words:
            if evidence:
                score = len(evidence & words) / len(evidence)
                if score > best_score:
                    best_number, best_score = number, score
        if best_number is None or best_score < min_overlap:
            out.append(piece)
            continue
        body = piece.rstrip()
        end = len(body)
        while end > 0 and body[end - 1] in ".!?;:":
            end -= 1
        out.append(f"{body[:end]} [{best_number}]{body[end:]}{piece[len(body) :]}")
        if best_number not in cited:
            cited.append(best_number)
    return CheckedReply("".join(out), cited)


def _expand(numbers: str) -> list[int] | None:
    """The numbers a citation bracket names; None when it is no citation ("[1990-2024]": a span of years)."""
    result: list[int] = []
    for chunk in re.split(r"\s*(?:,|;|\band\b)\s*", numbers, flags=re.IGNORECASE):
        chunk = re.sub(r"(?i)sources?", "", chunk).strip()
        span = re.fullmatch(rf"(\d+)\s*[{_DASHES}]\s*(\d+)", chunk)
        if span is None:
            result.extend(int(n) for n in re.findall(r"\d+", chunk))
        elif 0 <= int(span[2]) - int(span[1]) <= _MAX_RANGE:
            result.extend(range(int(span[1]), int(span[2]) + 1))
        else:
            return None
    return result


def _fix_citations(text: str, valid: set[int]) -> CheckedReply:
    cited: list[int] = []
    dropped: list[int] = []
    out: list[str] = []
    position = 0
    run: set[int] = set()  # numbers already in the run of brackets right before this one: "[2][2]" -> "[2]"
    for match in _CITATION.finditer(text):
        numbers = _expand(match.group(1))
        if numbers is None:
            continue
        before = text[position : match.start()]
        if before:
            run = set()
        good = [n for n in dict.fromkeys(numbers) if n in valid and n not in run]
        dropped += [n for n in dict.fromkeys(numbers) if n not in valid and n not in dropped]
        if good:
            out.append(before + "".join(f"[{n}]" for n in good))
            cited += [n for n in good if n not in cited]
            run.update(good)
        else:  # "word [9]." -> "word."
            out.append(before.rstrip(" \t") if not run else before)
        position = match.end()
    out.append(text[position:])
    return CheckedReply("".join(out), cited, dropped)


def _clean(text: str, valid: set[int], *, final: bool) -> CheckedReply:
    result = _fix_citations(strip_thinking(text), valid)
    deduplicated = _drop_repeated_sentences(result.text)
    if deduplicated != result.text:  # a dropped sentence may have held the only citation of a source
        kept = set(citation_numbers(deduplicated))
        result.cited = [n for n in result.cited if n in kept]
    result.text = deduplicated.strip() if final else deduplicated.lstrip()
    return result


def _drop_repeated_sentences(text: str) -> str:
    pieces = _SENTENCE_BREAK.split(text)
    kept = [pieces[0]]
    seen = {_sentence_key(pieces[0])}
    for index in range(1, len(pieces), 2):
        separator, sentence = pieces[index], pieces[index + 1]
        key = _sentence_key(sentence)
        if key and key in seen:
            continue
        seen.add(key)
        kept += [separator, sentence]
    return "".join(kept)


def _sentence_key(sentence: str) -> str:
    """Sentences compare equal whatever their citations, case and spacing; short ones never repeat."""
    key = " ".join(_CITATION.sub("", sentence).lower().split()).strip(" .!?;:")
    return key if len(key) >= _MIN_REPEAT_CHARS else ""


def _settled_end(raw: str) -> int:
    """Length of the prefix of `raw` that no later piece can change the cleaning of."""
    end = len(raw)
    lower = raw.lower()
    opened, closed = lower.rfind("<think>"), lower.rfind("</think>")
    if opened != -1 and closed < opened:
        end = opened
    for tag in ("<think>", "</think>"):
        for size in range(len(tag) - 1, 0, -1):
            if lower[:end].endswith(tag[:size]):
                end -= size
                break
    bracket = raw.rfind("[", 0, end)
    if bracket != -1 and "]" not in raw[bracket:end] and end - bracket <= _OPEN_BRACKET_HOLD:
        end = bracket
    if raw[:end].endswith("]"):  # a "(" next would make it a markdown link, which is kept as is
        bracket = raw.rfind("[", 0, end)
        if bracket != -1 and end - bracket <= _OPEN_BRACKET_HOLD:
            end = bracket
    while end > 0 and raw[end - 1].isspace():
        end -= 1
    return max(end, 0)


_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "this",
        "that",
        "these",
        "those",
        "are",
        "was",
        "were",
        "been",
        "being",
        "has",
        "have",
        "had",
        "its",
        "into",
        "about",
        "over",
        "under",
        "also",
        "only",
        "than",
        "then",
        "such",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "how",
        "why",
        "does",
        "did",
        "not",
        "yes",
        "there",
        "their",
        "they",
        "them",
        "his",
        "her",
        "you",
        "your",
        "our",
        "can",
        "could",
        "will",
        "would",
        "should",
        "may",
        "might",
        "must",
        "shall",
        "very",
        "more",
        "most",
        "some",
        "any",
        "all",
        "each",
        "both",
        "other",
        "one",
        "two",
        "per",
        "via",
        "image",
        "photo",
        "picture",
        "source",
        "sources",
        "document",
    ]
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ characters that are not stopwords, plurals made singular ("cats" -> "cat")."""
    words = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if len(word) < 3 or word in _STOPWORDS:
            continue
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
            word = word[:-1]
        words.add(word)
    return words
