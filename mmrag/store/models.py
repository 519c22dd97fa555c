"""Database tables. The database is the source of truth; FAISS indexes are rebuildable caches of it.

The schema itself is made by the Alembic migrations (mmrag/store/migrations); these classes map it. No
`from __future__ import annotations` here: SQLAlchemy would parse every string annotation again at each
start (tens of milliseconds of every command), so only forward references to later classes are quoted.
"""

import os
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere ids are 64-bit (they are FAISS ids).
Id64 = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class CollectionRow(Base):
    """One row per collection: `generation` counts its writes (every transaction that changes its items
    bumps it), so a process holding indexes in memory can tell in one query whether another process wrote;
    `setup` is how the collection was built (spaces, models, roads), see mmrag.collection."""

    __tablename__ = "collections"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    setup: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Space(Base):
    """An embedding space of a collection and the model that defines it."""

    __tablename__ = "spaces"
    collection: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(512))
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("collection", "path", name="uq_documents_collection_path"),)

    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(4096))  # printable: a name that is not UTF-8 has \xNN escapes
    path_bytes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # only for such names
    kind: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="indexed")  # indexed | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    items: Mapped[list["Item"]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def fs_path(self) -> str:
        """The path to open: the file system's own bytes where the printable path had to escape some."""
        return os.fsdecode(self.path_bytes) if self.path_bytes is not None else self.path


class Item(Base):
    """One retrievable thing: an image, a text chunk or a rendered page. Its id is its FAISS id."""

    __tablename__ = "items"
    # AUTOINCREMENT: SQLite must never hand a deleted item's id (= a FAISS id) to a new item.
    __table_args__ = (
        Index("ix_items_collection_modality", "collection", "modality"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    collection: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16))
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bbox: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    thumbnail: Mapped[str | None] = mapped_column(String(256), nullable=True)  # relative to data_dir
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    document: Mapped[Document] = relationship(back_populates="items")
    vectors: Mapped[list["ItemVector"]] = relationship(
        back_populates="item", cascade="all, delete-orphan", passive_deletes=True
    )


class ItemVector(Base):
    """An item's embedding in one space, kept so an index can be repaired or rebuilt without re-embedding."""

    __tablename__ = "item_vectors"
    __table_args__ = (Index("ix_item_vectors_space", "space"),)

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(32), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float16, L2-normalised

    item: Mapped[Item] = relationship(back_populates="vectors")


class Caption(Base):
    """What a captioner or OCR engine made of an image, keyed by the image's hash: never computed twice."""

    __tablename__ = "captions"

    image_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    captioner_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # kept for the report; retried next run
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A background ingest run of the REST service, kept here so its status outlives a restart."""

    __tablename__ = "jobs"
    # Migration 0010 also makes ux_jobs_claimed_collection, a partial unique index (one claimed job per
    # collection). It is not declared here: a `postgresql_where` argument imports SQLAlchemy's PostgreSQL
    # dialect in every process, embedded ones included, and the ORM never needs the index.
    __table_args__ = (Index("ix_jobs_status", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    collection: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # upload | folder
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | failed
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # files or folders to index
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # road, metadata, prune
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # per-file outcome and reason
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why the job as a whole failed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The replica working on it (mmrag.store.job_queue) until lease_until; a lapsed lease is taken over.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Replica(Base):
    """A running `mmrag serve`: it renews seen_at while it lives (mmrag.store.job_queue)."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    vector_store: Mapped[str] = mapped_column(String(16))  # faiss (one writer) | milvus (shared)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageGroup(Base):
    """One fingerprinted image item: its pHash and the near-duplicate group it belongs to."""

    __tablename__ = "image_groups"
    __table_args__ = (Index("ix_image_groups_collection_group", "collection", "group_id"),)

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    collection: Mapped[str] = mapped_column(String(64))
    phash: Mapped[int] = mapped_column(BigInteger)  # the 64 bits as a signed integer (no uint64 in SQL)
    group_id: Mapped[int] = mapped_column(BigInteger)  # the id of the group's first item


class PendingVector(Base):
    """An item whose vectors a durable vector store (Milvus) has not acknowledged yet: written in the same
    transaction as the item (op "upsert") or its deletion (op "delete"), removed once the store acknowledged
    the operation. An item is indexed when it has no row here; rows left by a killed process are retried.
    Item ids are never reused, so an item's row only ever goes from upsert to delete. No foreign key: a
    deleted item keeps its row until the store has dropped it too. A cache-type store (FAISS) writes none."""

    __tablename__ = "pending_vectors"
    __table_args__ = (Index("ix_pending_vectors_collection", "collection"),)

    item_id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=False)
    collection: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(8))  # upsert | delete
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key an admin made at run time (POST /v1/keys): only its sha256 digest is kept."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("sha256", name="uq_api_keys_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex, public: names the key
    sha256: Mapped[str] = mapped_column(String(64))  # hex digest of the key; looked up by it
    name: Mapped[str] = mapped_column(String(64), default="")
    collections: Mapped[list[str]] = mapped_column(JSON, default=list)  # names, or ["*"]
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
