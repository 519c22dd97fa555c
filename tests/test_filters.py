"""Filters: what `--where` and the API accept, and the Milvus expression they become (the same filters are
run on both backends in tests/test_vector_store.py)."""

from __future__ import annotations

import os

import pytest

from mmrag.filters import FilterError, Filters, is_under, same_value
from mmrag.index.milvus_store import collection_name, filter_expression


def test_where_conditions_parse_into_filters(tmp_path: os.PathLike[str]) -> None:
    parsed = Filters.parse(
        [
            "modality=image",
            "modality=page",
            "document=12",
            f"path={tmp_path}/photos/",
            "meta.owner=ann",
            "meta.year=2024",
            "meta.public=true",
            "meta.code=007x",
        ]
    )
    assert parsed.modalities == ("image", "page") and parsed.document_ids == frozenset({12})
    assert parsed.path_prefixes == (os.path.realpath(f"{tmp_path}/photos"),)
    assert dict(parsed.metadata) == {"owner": "ann", "year": 2024, "public": True, "code": "007x"}
    assert (
        parsed.narrows_items
        and not Filters().narrows_items
        and Filters.of(modalities=["text"]).empty is False
    )
    assert parsed.wants_modality("page") and not parsed.wants_modality("text")


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("colour=red", "unknown filter 'colour'"),
        ("modality=video", "unknown modality 'video'"),
        ("document=abc", "a document id is a number"),
        ("modality", "is not KEY=VALUE"),
        ("meta.=x", "unknown filter 'meta.'"),
    ],
)
def test_bad_conditions_are_refused_by_name(condition: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        Filters.parse([condition])


def test_documents_are_tested_as_json_values_and_folders_by_component() -> None:
    f = Filters.of(path_prefixes=["/photos/2024"], metadata={"year": 2024, "ok": True})
    assert f.accepts_document(1, "/photos/2024/a.jpg", {"year": 2024.0, "ok": True})
    assert not f.accepts_document(1, "/photos/2024_old/a.jpg", {"year": 2024, "ok": True})
    assert not f.accepts_document(1, "/photos/2024/a.jpg", {"year": 2024, "ok": 1})  # true is not 1
    assert not f.accepts_document(1, "/photos/2024/a.jpg", {"year": 2024})
    assert is_under("/a/b", "/a/b") and is_under("/a/b/c", "/a/b/") and not is_under("/a/bc", "/a/b")
    assert same_value(1, 1.0) and not same_value(True, 1) and not same_value("1", 1)


def test_the_milvus_expression_of_filters() -> None:
    expression = filter_expression(
        Filters.of(
            document_ids=[3, 1],
            path_prefixes=['/data/my "quoted" folder', "/x/"],
            metadata={"owner": "a\\b", "year": 2024, "public": False, "score": 0.5},
        )
    )
    assert expression == (
        "document_id in [1, 3] and "
        '((path == "/data/my \\"quoted\\" folder" or (path >= "/data/my \\"quoted\\" folder/" and '
        'path < "/data/my \\"quoted\\" folder0")) or (path == "/x" or (path >= "/x/" and path < "/x0"))) and '
        'meta["owner"] == "a\\\\b" and meta["public"] == false and meta["score"] == 0.5 and '
        'meta["year"] == 2024'
    )
    assert filter_expression(Filters.of(modalities=["image"])) == ""  # modality picks the collection


def test_milvus_collection_names_map_back_one_way_only() -> None:
    names = {collection_name("mmrag", c, "clip.image") for c in ("a_b", "a.b", "a-b", "a_ub", "ab")}
    assert len(names) == 5
    assert all(n.replace("_", "").isalnum() for n in names)
    assert collection_name("mmrag", "default", "text.text") == "mmrag_default_s_text_text"
