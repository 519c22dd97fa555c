from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from mmrag.ingest.items import Modality, sha256_text
from mmrag.ingest.text import chunk_words, extract_text_file, word_windows
from mmrag.settings import IngestSettings
from tests.realdata import PHOTO_DESCRIPTIONS, write_markdown

SETTINGS = IngestSettings(chunk_words=24, chunk_overlap_words=6)


def _body(text: str) -> str:
    """The chunk without its heading prefix line."""
    return text.split("\n", 1)[-1]


def test_chunk_words_windows_overlap_and_cover_every_word() -> None:
    words = PHOTO_DESCRIPTIONS["astronaut"].split() + PHOTO_DESCRIPTIONS["coins"].split()
    chunks = chunk_words(" ".join(words), size=10, overlap=3)
    split = [chunk.split() for chunk in chunks]
    assert all(len(chunk) <= 10 for chunk in split)
    for previous, current in itertools.pairwise(split):
        assert previous[-3:] == current[:3]
    # Stitching the windows back together (dropping each overlap) gives the original words.
    stitched = split[0] + [word for chunk in split[1:] for word in chunk[3:]]
    assert stitched == words


def test_chunk_words_normalises_whitespace_and_handles_short_and_empty_text() -> None:
    assert chunk_words("Chelsea\tthe\n\n  cat.  ", size=8, overlap=2) == ["Chelsea the cat."]
    assert chunk_words(" \n\t ", size=8, overlap=2) == []
    assert chunk_words("one two three four five", size=2, overlap=0) == ["one two", "three four", "five"]


def test_word_windows_do_not_repeat_a_tail_already_covered() -> None:
    # 10 words, windows of 6 stepping 4: [0,6) and [4,10); no third window of the last 2 words.
    assert word_windows(10, 6, 2) == [range(0, 6), range(4, 10)]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (5, 5), (5, 7), (5, -1)])
def test_chunk_words_rejects_impossible_windows(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_words("a b c", size=size, overlap=overlap)


def test_markdown_chunks_stay_in_their_section_and_start_with_its_headings(tmp_path: Path) -> None:
    path = write_markdown(tmp_path / "photos.md")
    items = list(extract_text_file(path, SETTINGS))

    assert items, "a real Markdown document gave no chunks"
    assert [item.meta["chunk"] for item in items] == list(range(len(items)))
    by_section: dict[str, list[str]] = {}
    for item in items:
        assert item.modality is Modality.TEXT
        assert item.content_hash == sha256_text(item.text or "")
        by_section.setdefault(item.meta.get("section", ""), []).append(item.text or "")

    astronaut = [s for s in by_section if s.endswith("People > Astronaut")]
    assert len(astronaut) == 1
    astronaut_chunks = by_section[astronaut[0]]
    assert all(text.startswith("People > Astronaut\n") for text in astronaut_chunks)
    assert len(astronaut_chunks) >= 2, "the astronaut section is long enough for several chunks"
    joined = " ".join(_body(text) for text in astronaut_chunks)
    assert "Eileen Collins" in joined
    assert "Grace Hopper" not in joined, "a chunk straddled two sections"

    chelsea = next(texts for section, texts in by_section.items() if section.endswith("Chelsea the cat"))
    assert all("Coffee cup" not in _body(text) for text in chelsea)


def test_markdown_line_numbers_point_at_each_chunks_first_word(tmp_path: Path) -> None:
    path = write_markdown(tmp_path / "photos.md")
    lines = path.read_text(encoding="utf-8").split("\n")
    items = list(extract_text_file(path, SETTINGS))
    for item in items:
        line = item.meta["line"]
        first_word = _body(item.text or "").split()[0]
        assert first_word in lines[line - 1], (item.text, line, lines[line - 1])
    # Lines grow through the document (chunks come in document order).
    numbers = [item.meta["line"] for item in items]
    assert numbers == sorted(numbers)


def test_markdown_setext_heading_code_fence_and_links(tmp_path: Path) -> None:
    path = write_markdown(tmp_path / "photos.md")
    items = list(extract_text_file(path, SETTINGS))
    sections = {item.meta.get("section", "") for item in items}

    assert any(section.endswith(" > Space") for section in sections), sections
    rocket = [item.text or "" for item in items if (item.meta.get("section") or "").endswith(" > Space")]
    assert any("DSCOVR" in text for text in rocket)
    assert "-----" not in " ".join(rocket)

    # '# returns a ...' inside ```python is code, not a heading.
    assert not any("returns a" in section for section in sections)
    loading = " ".join(
        item.text or "" for item in items if (item.meta.get("section") or "").endswith("photos")
    )
    assert "returns a (512, 512, 3) uint8 array" in loading

    everything = " ".join(item.text or "" for item in items)
    assert "https://scikit-image.org" not in everything
    assert "inside scikit-image, scikit-learn" in everything
    assert "the cat Grey images" in everything  # image alt text kept, its file name dropped


def test_heading_only_section_without_subsections_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# Photos\n\n## Coins\n\nGreek coins from Pompeii.\n\n## Moon\n", encoding="utf-8")
    texts = [item.text for item in extract_text_file(path, SETTINGS)]
    # "Photos" alone is carried by its subsections; "Moon" has nothing else to carry it.
    assert texts == ["Photos > Coins\nGreek coins from Pompeii.", "Photos > Moon"]


def test_plain_text_crlf_bom_and_line_numbers(tmp_path: Path) -> None:
    description = PHOTO_DESCRIPTIONS["coins"]
    path = tmp_path / "coins.txt"
    body = "\r\n".join(["", "", description])
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    items = list(extract_text_file(path, SETTINGS))
    assert items[0].text is not None
    assert not items[0].text.startswith("\ufeff")
    assert items[0].text.startswith("Greek coins from Pompeii.")
    assert items[0].meta == {"chunk": 0, "line": 3}
    assert "section" not in items[0].meta


def test_latin1_fallback(tmp_path: Path) -> None:
    path = tmp_path / "menu.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me, cr\u00eape \u00e0 la fran\u00e7aise".encode("latin-1"))
    (item,) = extract_text_file(path, SETTINGS)
    assert item.text == "Caf\u00e9 cr\u00e8me, cr\u00eape \u00e0 la fran\u00e7aise"


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \r\n"])
def test_empty_or_blank_file_gives_no_items(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "blank.md"
    path.write_bytes(content)
    assert list(extract_text_file(path, SETTINGS)) == []


def test_heading_prefix_counts_against_the_word_budget(tmp_path: Path) -> None:
    path = tmp_path / "astronaut.md"
    path.write_text(f"# Astronaut photo\n\n{PHOTO_DESCRIPTIONS['astronaut']}\n", encoding="utf-8")
    settings = IngestSettings(chunk_words=16, chunk_overlap_words=4)
    for item in extract_text_file(path, settings):
        assert len((item.text or "").split()) <= 16


def test_each_space_gets_its_own_chunk_size() -> None:
    from mmrag.ingest.text import Chunking, chunkings_for
    from mmrag.settings import SpacesSettings

    ingest = IngestSettings(chunk_words=48, chunk_overlap_words=8, text_chunk_words=160)
    assert chunkings_for(ingest, SpacesSettings(clip=True, text=False)) == [Chunking(48, 8)]
    assert chunkings_for(ingest, SpacesSettings(clip=False, text=True)) == [Chunking(160, 32)]
    assert chunkings_for(ingest, SpacesSettings(clip=True, text=True)) == [
        Chunking(48, 8, ("clip",)),
        Chunking(160, 32, ("text",)),
    ]
    same = IngestSettings(
        chunk_words=48, chunk_overlap_words=8, text_chunk_words=48, text_chunk_overlap_words=8
    )
    assert chunkings_for(same, SpacesSettings(clip=True, text=True)) == [Chunking(48, 8)]
    with pytest.raises(ValueError, match="text_chunk_overlap_words"):
        IngestSettings(text_chunk_words=16, text_chunk_overlap_words=16)


def test_two_chunkings_of_one_file_each_name_their_space(tmp_path: Path) -> None:
    """Both spaces active: CLIP's short chunks and the text space's long ones cover the same words, and the
    vectoriser embeds each only in its own space."""
    from mmrag.ingest.text import Chunking
    from mmrag.ingest.vectorise import PendingItem, _embedded_in

    path = write_markdown(tmp_path / "guide.md")
    chunkings = [Chunking(24, 6, ("clip",)), Chunking(96, 16, ("text",))]
    items = list(extract_text_file(path, SETTINGS, chunkings))
    short = [i for i in items if i.meta["spaces"] == ["clip"]]
    long = [i for i in items if i.meta["spaces"] == ["text"]]
    assert len(short) > len(long) > 0 and len(short) + len(long) == len(items)
    words = {w for i in short for w in _body(i.text or "").split()}
    assert words == {w for i in long for w in _body(i.text or "").split()}
    pending = [PendingItem(item, None) for item in items[:1] + long[:1]]
    assert [_embedded_in(p, "clip") for p in pending] == [True, False]
    assert [_embedded_in(p, "text") for p in pending] == [False, True]
    one = list(extract_text_file(path, SETTINGS))  # extraction called without spaces: one chunking for all
    assert all("spaces" not in i.meta for i in one)
