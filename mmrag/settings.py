"""One Settings object: defaults, over a YAML file from configs/, over MMRAG_* environment variables.

Priority (highest first): explicit overrides, environment (MMRAG_INDEX__USE_GPU=never), the YAML file given
by --config or MMRAG_CONFIG, the defaults below. configs/default.yaml spells the defaults out.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mmrag.errors import ConfigError

_yaml_file: ContextVar[Path | None] = ContextVar("mmrag_yaml_file", default=None)


def default_data_dir() -> Path:
    """Per-user data location, following XDG on Linux (~/.local/share/mmrag)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mmrag"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    # "open_clip:ARCH/PRETRAINED_TAG", "open_clip:ARCH/path/to/weights.pt", "hf-hub:org/repo", or a local
    # directory holding open_clip_config.json and weights.
    clip: str = "open_clip:ViT-B-32/laion2b_s34b_b79k"
    # Extra open_clip architecture JSON files or folders of them (open_clip.add_model_config).
    model_config_paths: list[Path] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    # Threads that prepare images (resize, crop) a batch ahead of CLIP's forward; 0 = auto (half the cores
    # up to 4 on CPU, up to 8 with a GPU).
    preprocess_workers: int = Field(0, ge=0, le=64)
    query_cache_size: int = Field(1024, ge=0)  # recent query embeddings kept per model; 0 = off
    cache_dir: Path | None = None  # where hub weights are cached; None = the library's default
    # The text space's sentence-transformers model; the packaged MiniLM copy is used when installed.
    text: str = "sentence-transformers/all-MiniLM-L6-v2"


class SpacesSettings(_Section):
    """Which embedding spaces (one FAISS index each) are active."""

    clip: bool = True  # images and text in open_clip's shared space
    text: bool = True  # text chunks, captions and OCR text in the sentence-transformers space


class CaptionSettings(_Section):
    """The caption road: describe each image in words (and read its text), embed that in the text space."""

    backend: Literal["none", "efficientnet", "openai", "transformers"] = "none"
    model: str = ""  # the served model name (openai) or a model id / directory (transformers)
    base_url: str = "http://localhost:8000/v1"  # any OpenAI-compatible server: vLLM, Ollama, llama.cpp
    api_key: SecretStr | None = None
    prompt: str | None = None  # None: mmrag's search-oriented caption prompt
    max_tokens: int = Field(120, ge=8, le=4096)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    max_concurrency: int = Field(4, ge=1, le=256)
    batch_size: int = Field(8, ge=1, le=512)
    ocr: bool = False  # also read text in images and rendered pages (RapidOCR); feeds the text space
    ocr_min_score: float = Field(0.5, ge=0, le=1)


class GenerateSettings(_Section):
    """Answer generation: the retrieved items go to a VLM (or a text-only LLM) that writes a cited answer."""

    # transformers: a local VLM (hub id or directory); openai: any OpenAI-compatible server; llm: a local
    # text-only causal LM (hub id, directory, a .gguf file, or "pkg:<python package>" holding a .gguf) that
    # reads images through their captions and OCR text; none: `ask` only retrieves.
    backend: Literal["none", "transformers", "openai", "llm"] = "transformers"
    model: str = "HuggingFaceTB/SmolVLM-256M-Instruct"
    base_url: str = "http://localhost:8000/v1"
    api_key: SecretStr | None = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0, le=20)
    max_tokens: int = Field(512, ge=8, le=32768)  # length of the answer
    temperature: float = Field(0.0, ge=0, le=2)  # 0 = greedy (local backends decode greedily anyway)
    k: int = Field(8, ge=1, le=100)  # retrieved items offered to the model
    context_tokens: int = Field(3000, ge=64)  # budget for the sources (text + images) in the prompt
    image_tokens: int = Field(256, ge=1)  # what one image costs against context_tokens
    max_source_chars: int = Field(2000, ge=64)  # a longer source text (an OCR'd page) is cut
    max_images: int = Field(4, ge=0, le=64)  # images sent as pixels; 0 = captions/OCR text only
    max_image_side: int = Field(768, ge=16, le=4096)
    max_image_bytes: int = Field(300_000, ge=1024)  # per image, as encoded JPEG
    attribute_uncited: bool = True  # a reply without citations gets them by matching sentences to sources
    # A reply that repeats itself, says what no source says, invents code or miscites is replaced by
    # sentences extracted from the sources (mmrag.generate.quality); false shows every reply as it is.
    quality_gate: bool = True
    cache_dir: Path | None = None  # de-quantised copies of .gguf models; None = $XDG_CACHE_HOME/mmrag

    @model_validator(mode="after")
    def _backend_has_model(self) -> GenerateSettings:
        if self.backend != "none" and not self.model.strip():
            raise ValueError(f"generate.backend={self.backend} needs generate.model")
        return self


RayStage = Literal["clip", "text", "caption", "ocr"]


class RaySettings(_Section):
    """ingest.runner=ray: which cluster, and how each model stage is scaled (one actor pool per model)."""

    # "" = start a cluster on this machine for the run; "auto" = the cluster this machine belongs to
    # (`ray start` was run here); "ray://host:10001" = a remote cluster through Ray Client.
    address: str = ""
    workers: int = Field(1, ge=1, le=4096)  # actors per model stage; each loads its model once
    cpus_per_worker: float = Field(1.0, gt=0)
    # GPUs per model actor: "auto" = 1 when the cluster has GPUs, else 0; a fraction shares a GPU.
    gpus_per_worker: float | Literal["auto"] = "auto"
    extract_cpus: float = Field(1.0, gt=0)  # per extraction task (one file each)
    # Items per model call, by stage; a stage not named takes models.batch_size (caption, ocr:
    # caption.batch_size).
    batch_size: dict[RayStage, int] = Field(default_factory=dict)
    object_store_memory: int | None = Field(None, ge=78_643_200)  # bytes; a cluster started here only

    @field_validator("batch_size")
    @classmethod
    def _positive_batches(cls, sizes: dict[str, int]) -> dict[str, int]:
        for stage, size in sizes.items():
            if not 1 <= size <= 65_536:
                raise ValueError(f"ingest.ray.batch_size.{stage} must be between 1 and 65536, not {size}")
        return sizes


class IngestSettings(_Section):
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # A text file's chunks and vectors are held until it commits: 16 MiB is ~60k chunks, ~10 minutes of
    # MiniLM on a CPU and a few hundred MB. Larger text files are reported and skipped.
    max_text_bytes: int = Field(16 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(100_000_000, ge=1)  # Pillow's decompression-bomb limit
    thumbnail_size: int = Field(256, ge=16, le=2048)
    min_pdf_image_side: int = Field(64, ge=1)  # smaller embedded images are icons, bullets, rules
    render_pages: bool = False  # also index a rendered image of every PDF page (scans, figure pages)
    render_dpi: int = Field(96, ge=24, le=600)
    max_pdf_pages: int = Field(5000, ge=1)
    chunk_words: int = Field(48, ge=8)  # CLIP's text tower reads 77 tokens: ~50 words fit
    chunk_overlap_words: int = Field(8, ge=0)
    # The text space's chunks: all-MiniLM-L6-v2 reads 256 word pieces. With both spaces active and another
    # size than chunk_words, text is chunked twice, each chunking embedded in its own space.
    text_chunk_words: int = Field(160, ge=8)
    text_chunk_overlap_words: int = Field(32, ge=0)
    save_every_files: int = Field(50, ge=1)  # persist the index this often during a run
    # Which road images take: "clip" (image tower), "caption" (caption/OCR text in the text space), "both".
    road: Literal["clip", "caption", "both"] = "clip"
    # Who schedules the ingest stages (mmrag.ingest.stages): "local" (this process: files are read and
    # decoded by extract_workers threads while the models run) or "ray" (a Ray cluster, mmrag[ray]).
    runner: Literal["local", "ray"] = "local"
    extract_workers: int = Field(2, ge=1, le=64)  # local runner: threads reading and decoding files
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> IngestSettings:
        for size, overlap in (
            ("chunk_words", "chunk_overlap_words"),
            ("text_chunk_words", "text_chunk_overlap_words"),
        ):
            words, shared = getattr(self, size), getattr(self, overlap)
            if shared >= words:
                raise ValueError(f"{overlap} ({shared}) must be smaller than {size} ({words})")
        return self


class RetrieveSettings(_Section):
    # "calibrated": per-space, per-modality score normalisation fitted on the collection; "rrf": by rank.
    fusion: Literal["calibrated", "rrf", "raw"] = "calibrated"  # raw: max cosine, for comparison only
    # A BM25 list over the items' words (text chunks, captions, OCR text), fused with the dense lists: it
    # finds the exact terms (commands, options, identifiers) that embeddings miss.
    lexical: bool = True
    # One hit per PDF page (its best chunk shown, the others counted; a text file counts as one page).
    group_pages: bool = True
    demote_list_pages: bool = True  # contents and index pages ranked below the pages they list
    fold_duplicates: bool = True  # one hit per picture; its near-duplicate copies listed as "also in"
    # A sentence-transformers CrossEncoder (hub id or directory) that rereads the top hits after fusion;
    # None (or "off") = no reranking. No cross-encoder weights install from PyPI, so it is off by default.
    rerank: str | None = None
    rerank_top_n: int = Field(50, ge=1, le=1000)  # how many fused hits the cross-encoder rescores

    @field_validator("rerank")
    @classmethod
    def _off_means_none(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none", "null", "false"):
            return None
        return value.strip()


# Index types a Milvus server builds (milvus.io/docs/index-explained.md); GPU_* need a GPU build of Milvus.
MILVUS_SERVER_INDEX_TYPES = (
    "AUTOINDEX", "FLAT", "HNSW", "HNSW_SQ", "HNSW_PQ", "HNSW_PRQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ",
    "IVF_RABITQ", "DISKANN", "SCANN", "GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE",
)  # fmt: skip
# What Milvus Lite (a local path) really builds; it accepts the others at create time and builds nothing.
MILVUS_LITE_INDEX_TYPES = ("AUTOINDEX", "FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8")


class MilvusSettings(_Section):
    """index.backend=milvus: where Milvus is and how it indexes. Durable storage, not a cache."""

    # A local path (Milvus Lite, in-process: one process per path) or http(s)://host:19530 (standalone or
    # cluster). "" = milvus.db in the data dir. A relative path is taken from the working directory.
    uri: str = ""
    token: SecretStr | None = None  # "user:password" or an API key; never recorded with the collection
    db_name: str = ""  # "" = Milvus's default database
    collection_prefix: str = Field("mmrag", pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}$")
    # "" = FLAT on Milvus Lite (exact, as FAISS below index.ivf_min_items: Lite is for tests and small
    # setups) and AUTOINDEX on a server; or HNSW, IVF_FLAT, ...; GPU_CAGRA where the server has GPUs
    index_type: str = ""
    index_params: dict[str, Any] = Field(default_factory=dict)  # e.g. {"M": 16, "efConstruction": 200}
    search_params: dict[str, Any] = Field(default_factory=dict)  # e.g. {"ef": 64} or {"nprobe": 16}
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    timeout_s: float = Field(60.0, gt=0)  # per call; Milvus Lite flushes inside the upsert that fills it

    @field_validator("uri")
    @classmethod
    def _local_path_is_absolute(cls, uri: str) -> str:
        uri = uri.strip()
        if uri and "://" not in uri and not uri.startswith("unix:"):
            return str(Path(uri).expanduser().absolute())  # recorded with the collection: cwd-independent
        return uri

    @field_validator("index_type")
    @classmethod
    def _known_index_type(cls, index_type: str) -> str:
        index_type = index_type.strip().upper()
        if index_type and index_type not in MILVUS_SERVER_INDEX_TYPES:
            raise ValueError(
                f"unknown Milvus index type {index_type!r}: use one of {', '.join(MILVUS_SERVER_INDEX_TYPES)}"
            )
        return index_type

    def index_type_for(self, local: bool) -> str:
        return self.index_type or ("FLAT" if local else "AUTOINDEX")

    @property
    def is_local(self) -> bool:
        """Milvus Lite on a local path (as opposed to a server reached over the network)."""
        return "://" not in self.uri and not self.uri.startswith("unix:")


class IndexSettings(_Section):
    # Where vectors are searched: faiss (embedded; a cache of the database, rebuilt from it) or milvus
    # (durable storage, shared by processes and machines). The database keeps every vector either way.
    backend: Literal["faiss", "milvus"] = "faiss"
    use_gpu: Literal["auto", "never"] = "auto"
    ivf_min_items: int = Field(100_000, ge=1000)  # below this, exact flat search; from here, `ann`
    # The approximate layout from ivf_min_items up: "ivf" (builds in seconds, deletes in place) or "hnsw"
    # (no training, fast accurate queries, slower to build; removed vectors stay hidden until a rebuild).
    ann: Literal["ivf", "hnsw"] = "ivf"
    nprobe: int = Field(
        0, ge=0
    )  # IVF lists searched per query; 0 = auto (64: recall@10 >= 0.95, bench/ann.py)
    hnsw_m: int = Field(32, ge=4, le=256)  # graph links per vector
    hnsw_ef_construction: int = Field(40, ge=8, le=4096)  # candidates kept while building
    hnsw_ef_search: int = Field(128, ge=1, le=65536)  # candidates kept while searching; 128: recall@10 ~0.97
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)


class S3Settings(_Section):
    """An S3-compatible service (AWS S3, MinIO, Ceph, R2): for blobs.url=s3://... and s3:// input folders.
    Credentials come from the usual AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an
    instance role): mmrag's settings never hold them."""

    endpoint_url: str | None = None  # None = AWS; MinIO: http://minio:9000
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "path"  # MinIO and most self-hosted: path


class BlobSettings(_Section):
    """Files that are not in the database (thumbnails, uploaded files): one store that every process and
    machine of a deployment reads and writes."""

    # "" = the data dir (one machine); a folder every machine mounts; or s3://bucket/prefix.
    url: str = ""
    s3: S3Settings = Field(default_factory=S3Settings)

    @field_validator("url")
    @classmethod
    def _folder_or_s3(cls, url: str) -> str:
        url = url.strip()
        if "://" in url and not url.startswith("s3://"):
            raise ValueError(f"blobs.url must be a folder or s3://bucket/prefix, not {url!r}")
        if url.startswith("s3://") and not url[5:].split("/", 1)[0]:
            raise ValueError(f"blobs.url {url!r} names no bucket: s3://bucket/prefix")
        return url


COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_KEY_HELP = "`mmrag key` prints a new key and its hash"


def sha256_hex_digest(value: str) -> str:
    """A key's sha256 hex digest, normalised ("SHA256:ABC..." -> "abc..."); ValueError for anything else."""
    digest = value.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(
            f"API keys are configured by their sha256 hex digests (64 hex digits), not the keys themselves; "
            f"{_KEY_HELP}"
        )
    return digest


class ApiKeySettings(_Section):
    """One accepted API key, by its digest, and what it may reach."""

    sha256: str  # hex digest of the key
    # Collections the key may read and write (and create); "*" = every collection.
    collections: list[str] = Field(min_length=1)
    admin: bool = (
        False  # may also create and revoke keys (POST /v1/keys), ingest server folders, see everything
    )
    name: str = Field("", max_length=64)  # a label for the operator

    @field_validator("sha256")
    @classmethod
    def _is_sha256_hex(cls, value: str) -> str:
        return sha256_hex_digest(value)

    @field_validator("collections")
    @classmethod
    def _are_collection_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and not re.fullmatch(COLLECTION_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a collection name (or '*' for every collection)")
        return names


class ApiSettings(_Section):
    """The REST service (`mmrag serve`): where it listens, who may call it, and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # sha256 hex digests of keys with full access (every collection, admin). The config never holds a key
    # itself (`mmrag key` makes one). No key here nor in `keys` = no authentication (local use only).
    api_key_hashes: list[str] = Field(default_factory=list)
    # Keys scoped to collections: [{sha256: ..., collections: [photos], admin: false}]. Admin keys can also
    # make keys at run time (POST /v1/keys), which are kept in the database.
    keys: list[ApiKeySettings] = Field(default_factory=list)
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1024)  # per request body, enforced while it streams
    max_files_per_request: int = Field(32, ge=1, le=10_000)
    max_pdf_pages_per_request: int = Field(2000, ge=1)
    # Server-side folder ingest (POST /v1/collections/{c}/folders) only under these folders; empty = off.
    # Originals (GET /v1/items/{id}/image?variant=original) are served only from here and the data dir.
    allowed_roots: list[Path] = Field(default_factory=list)
    workers: int = Field(4, ge=1, le=256)  # threads for model inference and FAISS searches
    preload_models: bool = False  # load model weights at start (deployments) rather than on first use
    cors_origins: list[str] = Field(default_factory=list)
    # Ingest jobs are a queue in the database shared by every replica: a replica claims a job with a lease
    # it renews every job_lease_s / 3; a job whose lease ran out (its replica died) is taken over.
    job_lease_s: float = Field(30.0, ge=1.0, le=3600.0)
    job_poll_s: float = Field(1.0, gt=0, le=60.0)  # how often an idle replica looks for jobs
    # A job of at least this many files runs on the Ray cluster (ingest.ray.*) when ingest.runner=ray;
    # smaller ones run in the replica itself.
    ray_min_files: int = Field(64, ge=1)

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes_are_sha256_hex(cls, hashes: list[str]) -> list[str]:
        try:
            return [sha256_hex_digest(h) for h in hashes]
        except ValueError:
            raise ValueError(
                f"api.api_key_hashes holds sha256 hex digests of the keys; {_KEY_HELP}"
            ) from None

    @property
    def authentication(self) -> bool:
        """Keys are checked when the config names at least one; keys made at run time need an admin key."""
        return bool(self.api_key_hashes or self.keys)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MMRAG_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # None: SQLite in data_dir; any SQLAlchemy URL otherwise
    collection: str = Field("default", pattern=COLLECTION_NAME_PATTERN)
    # torch, FAISS and ONNX Runtime threads (mmrag.threads); 0 = auto: one per core up to 8, one core left
    # free on machines with up to 4.
    threads: int = Field(0, ge=0, le=1024)
    models: ModelSettings = Field(default_factory=ModelSettings)
    spaces: SpacesSettings = Field(default_factory=SpacesSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    caption: CaptionSettings = Field(default_factory=CaptionSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieve: RetrieveSettings = Field(default_factory=RetrieveSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)

    @model_validator(mode="after")
    def _roads_have_their_spaces(self) -> Settings:
        road = self.ingest.road
        if not (self.spaces.clip or self.spaces.text):
            raise ValueError("no embedding space is active: enable spaces.clip and/or spaces.text")
        if road in ("clip", "both") and not self.spaces.clip:
            raise ValueError(f"ingest.road={road} sends images through CLIP, but spaces.clip is off")
        if road in ("caption", "both"):
            if not self.spaces.text:
                raise ValueError(
                    f"ingest.road={road} embeds captions in the text space, but spaces.text is off"
                )
            if self.caption.backend == "none" and not self.caption.ocr:
                raise ValueError(
                    f"ingest.road={road} needs a captioner (caption.backend) or OCR (caption.ocr: true)"
                )
        if self.caption.backend in ("openai", "transformers") and not self.caption.model:
            raise ValueError(f"caption.backend={self.caption.backend} needs caption.model")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'mmrag.db'}"

    def index_dir(self, collection: str | None = None) -> Path:
        return self.data_dir / "indexes" / (collection or self.collection)

    @property
    def milvus_uri(self) -> str:
        return self.index.milvus.uri or str((self.data_dir / "milvus.db").absolute())

    @property
    def thumbnail_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _yaml_file.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


@contextmanager
def _yaml_layer(path: Path | None):  # type: ignore[no-untyped-def]
    token = _yaml_file.set(path)
    try:
        yield
    finally:
        _yaml_file.reset(token)


PROFILES_DIR = Path(__file__).parent / "profiles"


def profile_names() -> list[str]:
    """Settings files that ship with mmrag, usable by name: `--config offline`."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml"))


def config_path(config: Path | str) -> Path:
    """A YAML file's path, or the packaged profile of that name (`offline`), from any working directory."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    if str(config) in profile_names():
        return PROFILES_DIR / f"{config}.yaml"
    raise ConfigError(
        f"config file not found: {path} (the packaged profiles, usable by name: {', '.join(profile_names())})"
    )


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional YAML file or profile name (argument, else $MMRAG_CONFIG), env and
    overrides."""
    from pydantic import ValidationError

    raw = config or os.environ.get("MMRAG_CONFIG") or None
    path = config_path(raw) if raw else None
    try:
        with _yaml_layer(path):
            return Settings(**overrides)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid settings{where}:\n{exc}") from exc
