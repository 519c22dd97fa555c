"""Request and response bodies of the REST API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mmrag.settings import COLLECTION_NAME_PATTERN as COLLECTION_PATTERN  # noqa: F401 - for the routes

MAX_QUERY_TEXT = 4000
MAX_METADATA_KEYS = 32


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; mmrag stores UTC everywhere, so say so
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
Road = Literal["clip", "caption", "both"]
ModalityName = Literal["text", "image", "page"]
FusionName = Literal["calibrated", "rrf", "raw"]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)] | int | float | bool


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 6 and 6.0, but not true or "6" (which pydantic would take for 1 and 6)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("Input should be a valid integer")
    return value


# The request bodies' types accept what their JSON schema allows, no more: an integer (6 or 6.0), a boolean
# (true, not "yes" or 1).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
JsonBool = Annotated[bool, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: str = Field(description="A short machine-readable code", examples=["not_found"])
    message: str = Field(description="What is wrong, in words", examples=["no item 42"])
    details: list[dict[str, Any]] | None = Field(None, description="Per-field problems of an invalid request")


# ---- ingest ----------------------------------------------------------------------------------------------


class UploadOptions(_Strict):
    """The `options` form field of an upload, as JSON."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"road": "clip", "metadata": {"source": "scanner", "year": 2024}}]},
    )
    road: Road | None = Field(None, description="How images are embedded; default: the server's ingest.road")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description="Stored with every uploaded document; queries can filter on it",
    )


class FolderIngestRequest(UploadOptions):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"path": "/srv/scans/2024", "prune": True}]}
    )
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="An absolute path of a folder under one of api.allowed_roots",
        json_schema_extra={"pattern": r"^/[^\x00]*$"},  # checked by the validator, with clearer messages
    )
    prune: JsonBool = Field(
        False, description="Also remove documents of files that disappeared under the folder"
    )

    @field_validator("path")
    @classmethod
    def _absolute_file_system_path(cls, path: str) -> str:
        """Checked before any file system call sees it: a NUL would end the C string (and fail the call)."""
        if "\x00" in path:
            raise ValueError("a path cannot contain a NUL character")
        if not path.startswith("/"):
            raise ValueError(f"the path must be absolute, got {path[:200]!r}")
        return path


class AcceptedFile(BaseModel):
    name: str = Field(examples=["chelsea.jpg"])
    kind: Literal["image", "pdf", "text"]
    size: int
    sha256: str


class JobAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5b0f7c1e2d3a4b5c8d9e0f1a2b3c4d5e",
                    "status": "queued",
                    "collection": "default",
                    "files": [{"name": "chelsea.jpg", "kind": "image", "size": 21532, "sha256": "9f2c..."}],
                    "status_url": "/v1/jobs/5b0f7c1e2d3a4b5c8d9e0f1a2b3c4d5e",
                }
            ]
        }
    )
    job_id: str
    status: Literal["queued"]
    collection: str
    files: list[AcceptedFile]
    status_url: str


class JobFile(BaseModel):
    name: str
    status: str = Field(description="indexed | unchanged | failed | unsupported")
    items: int
    reason: str | None = Field(None, description="Why the file failed or was skipped")
    document_id: int | None = None


class JobStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5b0f7c1e2d3a4b5c8d9e0f1a2b3c4d5e",
                    "collection": "default",
                    "kind": "upload",
                    "status": "done",
                    "counts": {"indexed": 1, "failed": 1, "items": 1},
                    "files": [
                        {
                            "name": "chelsea.jpg",
                            "status": "indexed",
                            "items": 1,
                            "reason": None,
                            "document_id": 7,
                        },
                        {
                            "name": "broken.jpg",
                            "status": "failed",
                            "items": 0,
                            "reason": "corrupt or truncated image: image file is truncated",
                            "document_id": 8,
                        },
                    ],
                    "error": None,
                    "created_at": "2026-11-26T10:00:00Z",
                    "started_at": "2026-11-26T10:00:00Z",
                    "finished_at": "2026-11-26T10:00:02Z",
                }
            ]
        }
    )
    id: str
    collection: str
    kind: Literal["upload", "folder"]
    status: Literal["queued", "running", "done", "failed"]
    counts: dict[str, int] = Field(
        description="Files per outcome (indexed, unchanged, failed, unsupported), items; while the job runs, "
        "also items_embedded (items with their vectors, committed or not)"
    )
    files: list[JobFile]
    error: str | None = Field(None, description="Why the job as a whole failed")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


# ---- query and ask -----------------------------------------------------------------------------------------


class QueryFilters(_Strict):
    modality: list[ModalityName] | None = Field(
        None, min_length=1, description="Only items of these modalities"
    )
    document_ids: list[Annotated[int, Field(ge=1), BeforeValidator(_json_integer)]] | None = Field(
        None, min_length=1, max_length=1000, description="Only items of these documents"
    )
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=MAX_METADATA_KEYS, description="Only documents whose metadata has all these values"
    )
    paths: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Only documents at these paths or under these folders (absolute, or relative to the "
        "data dir as hits show uploads: uploads/COLLECTION/...)",
    )


# What base64.b64decode(validate=True) takes, after an optional "data:...," prefix; the service checks it
# itself, with a clearer message than a pattern mismatch.
BASE64_PATTERN = r"^(data:[^,]*,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Base64Text = Annotated[
    str, Field(min_length=1, json_schema_extra={"contentEncoding": "base64", "pattern": BASE64_PATTERN})
]


class _QueryBase(_Strict):
    image_base64: Base64Text | None = Field(
        None, description="A query image (JPEG, PNG, WebP, GIF, BMP, TIFF), base64; or upload it as `image`"
    )
    filters: QueryFilters | None = None
    fusion: FusionName | None = Field(None, description="Default: the server's retrieve.fusion")


class QueryRequest(_QueryBase):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "a cat asleep on a sofa", "k": 5},
                {
                    "text": "rocket launch",
                    "k": 10,
                    "filters": {"modality": ["image"], "metadata": {"year": 2024}},
                },
            ],
            "anyOf": [  # what _needs_text_or_image checks
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {
                    "required": ["image_base64"],
                    "properties": {"image_base64": {"type": "string", "minLength": 1}},
                },
            ],
        },
    )
    text: str | None = Field(None, min_length=1, max_length=MAX_QUERY_TEXT)
    k: JsonInt = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _needs_text_or_image(self, info: ValidationInfo) -> QueryRequest:
        uploaded = bool(info.context and info.context.get("image_uploaded"))
        if not self.text and not self.image_base64 and not uploaded:
            raise ValueError("a query needs text, an image, or both")
        return self


class AskRequest(_QueryBase):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "What is the cat lying on?", "k": 5, "stream": False}]},
    )
    question: str = Field(min_length=1, max_length=MAX_QUERY_TEXT)
    k: JsonInt = Field(5, ge=1, le=50, description="How many retrieved items the answer may draw on")
    stream: JsonBool = Field(False, description="Stream the answer as server-sent events")


class SourceOut(BaseModel):
    number: int | None = Field(description="The [n] the answer cites it by; null when not given to the model")
    item_id: int
    document_id: int | None
    path: str
    page: int | None
    bbox: list[float] | None
    modality: str
    score: float
    sent_as: str | None = Field(None, description="image | text: how the model saw it")
    cited: bool = False
    left_out: str | None = Field(None, description="Why it was not given to the model")
    image_url: str | None = None


class QualityIssueOut(BaseModel):
    check: str = Field(
        description="no_content | prompt_echo | repetition | unsupported | invented_code | miscited | uncited"
    )
    reason: str


class AskResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "question": "What is the cat lying on?",
                    "answer": "The cat is lying on a red sofa [1].",
                    "backend": "openai: model 'qwen2.5-vl' at http://localhost:8000/v1",
                    "cited": [1],
                    "sources": [
                        {
                            "number": 1,
                            "item_id": 7,
                            "document_id": 3,
                            "path": "uploads/default/9f2c.../chelsea.jpg",
                            "page": None,
                            "bbox": None,
                            "modality": "image",
                            "score": 4.2,
                            "sent_as": "image",
                            "cited": True,
                            "left_out": None,
                            "image_url": "/v1/items/7/image",
                        }
                    ],
                    "left_out": [],
                    "citations_added": False,
                    "dropped_citations": [],
                    "quality_issues": [],
                    "fallback": None,
                    "rejected_answer": None,
                    "error": None,
                    "warnings": [],
                    "took_ms": 850.0,
                }
            ]
        }
    )
    question: str
    answer: str | None = Field(description="null when no answer could be generated: see error")
    backend: str
    cited: list[int]
    sources: list[SourceOut] = Field(description="Given to the model, numbered as the answer cites them")
    left_out: list[SourceOut] = Field(description="Retrieved, but not given to the model (and why)")
    citations_added: bool = Field(description="The model cited nothing; mmrag matched sentences to sources")
    dropped_citations: list[int]
    quality_issues: list[QualityIssueOut] = Field(
        [], description="The quality checks the model's reply failed (empty: it passed, or the gate is off)"
    )
    fallback: str | None = Field(
        None,
        description="'extractive': the reply failed the quality check and `answer` holds sentences "
        "extracted from the sources, each cited by number, instead",
    )
    rejected_answer: str | None = Field(None, description="The model's reply, when `fallback` replaced it")
    error: str | None = Field(description="Why generation failed (the sources are still listed)")
    warnings: list[str]
    took_ms: float


class HitOut(BaseModel):
    item_id: int
    document_id: int
    score: float = Field(description="The fused score (calibrated: best z-score; rrf: reciprocal rank sum)")
    modality: str
    path: str = Field(description="The source file (uploads: relative to the data dir)")
    page: int | None
    bbox: list[float] | None
    text: str | None
    metadata: dict[str, Any] = Field(description="The document's metadata")
    ranks: dict[str, int] = Field(description="Rank in each list that found it: 'space:query>modality'")
    scores: dict[str, float] = Field(description="Raw cosine in each list that found it")
    calibrated: dict[str, float] = Field(description="Calibrated z-score in each list (calibrated fusion)")
    more_on_page: int = Field(0, description="Other items of this page (or text file) that matched")
    also_in: list[dict[str, Any]] = Field(
        default_factory=list, description="Other copies of this picture: [{'path': ..., 'page': 3}]"
    )
    list_page: bool = Field(False, description="A contents or index page (ranked below the pages it lists)")
    image_url: str | None = Field(None, description="The item's picture, for image and page items")


class QueryResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collection": "default",
                    "hits": [
                        {
                            "item_id": 7,
                            "document_id": 3,
                            "score": 4.2,
                            "modality": "image",
                            "path": "uploads/default/9f2c.../chelsea.jpg",
                            "page": None,
                            "bbox": None,
                            "text": None,
                            "metadata": {"source": "scanner"},
                            "ranks": {"clip:text>image": 1},
                            "scores": {"clip:text>image": 0.31},
                            "calibrated": {"clip:text>image": 4.2},
                            "image_url": "/v1/items/7/image",
                        }
                    ],
                    "took_ms": 12.5,
                }
            ]
        }
    )
    collection: str
    hits: list[HitOut]
    took_ms: float


# ---- documents, items, collections ---------------------------------------------------------------------


class DocumentOut(BaseModel):
    id: int
    collection: str
    path: str
    name: str
    kind: str
    status: str = Field(description="indexed | failed")
    error: str | None
    size: int
    items: int
    metadata: dict[str, Any]
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None


class DocumentList(BaseModel):
    collection: str
    total: int
    offset: int
    documents: list[DocumentOut]


class DeletedDocument(BaseModel):
    id: int
    collection: str
    deleted: bool = True


class ItemOut(BaseModel):
    item_id: int
    collection: str
    document_id: int
    path: str
    modality: str
    page: int | None
    bbox: list[float] | None
    text: str | None
    metadata: dict[str, Any] = Field(description="The item's own metadata (captions, OCR text, ...)")
    document_metadata: dict[str, Any]
    image_url: str | None


class CollectionOut(BaseModel):
    name: str
    documents: int
    items: int


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    detail: str | None = None
    models: dict[str, bool] = Field(
        default_factory=dict,
        description="Model id -> loaded (weights load on the first request that needs them)",
    )


# ---- API keys --------------------------------------------------------------------------------------------

CollectionScope = Annotated[
    str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$", max_length=64)
]


class KeyRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "photo app", "collections": ["photos"], "admin": False}]},
    )
    name: str = Field("", max_length=64, description="A label, for the list of keys")
    collections: list[CollectionScope] = Field(
        min_length=1,
        max_length=1000,
        description='Collections the key may read and write (and create); "*" for every collection',
    )
    admin: JsonBool = Field(
        False, description="May also make and revoke keys, ingest server folders, see all"
    )


class KeyOut(BaseModel):
    id: str = Field(description="Names the key, e.g. to revoke it; not the key itself")
    name: str
    collections: list[str]
    admin: bool
    created_at: UtcDatetime


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, only its sha256 is kept")


class KeyList(BaseModel):
    keys: list[KeyOut] = Field(description="Keys made through the API (the config's own keys are not listed)")


class KeyRevoked(BaseModel):
    id: str
    revoked: Literal[True] = True
