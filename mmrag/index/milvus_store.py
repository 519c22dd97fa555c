"""index.backend=milvus: the collection's vectors in Milvus (`pymilvus.MilvusClient`), durable storage.

`index.milvus.uri` is a local path (Milvus Lite, in this process; one process per path) or
http(s)://host:19530 (Milvus standalone or a cluster). Each (collection, space, modality) is one Milvus
collection, named PREFIX_COLLECTION_s_SPACE_MODALITY, with the item id as primary key and, next to the
vector, what filters look at: the document's id, path and metadata. Filters become a Milvus filter
expression, evaluated inside the vector search.

The database stays the source of truth for everything else; an item's upsert is queued in it with the item
and acknowledged once Milvus returned (see mmrag.collection), so a write Milvus never saw is retried.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from mmrag.errors import ConfigError, MmragError, ModelMismatchError
from mmrag.filters import Filters
from mmrag.index.base import IndexInfo, OpenedIndex, VectorStore, Where, split_key
from mmrag.settings import MILVUS_LITE_INDEX_TYPES, Settings
from mmrag.store.items import ItemPayload

log = logging.getLogger(__name__)
# gRPC's C core logs the closing of a connection at INFO unless told otherwise (before it is loaded)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # it logs every failed call; ours say why
# Milvus Lite's in-process gRPC server logs a traceback for each call it does not implement (AllocTimestamp,
# asked by every query iterator, which then takes the client's time): noise, not an error of ours.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

MAX_PATH = 4096
_UPSERT_BATCH = 2000  # rows per call: ~4 MB of 512-d float32, far below gRPC's 256 MB message limit
_ITERATOR_BATCH = 10_000


class MilvusError(MmragError):
    """Milvus cannot be reached, or refused an operation."""


class _SharedClient:
    """One MilvusClient per (uri, token, database) in a process, shared by its collections; Milvus Lite's
    in-process server is released with the last one."""

    _lock = threading.Lock()
    _clients: ClassVar[dict[tuple[str, str, str], tuple[Any, int]]] = {}

    @classmethod
    def acquire(cls, uri: str, token: str, db_name: str, timeout: float) -> Any:
        key = (uri, token, db_name)
        with cls._lock:
            if key in cls._clients:
                client, users = cls._clients[key]
                cls._clients[key] = (client, users + 1)
                return client
            client = _connect(uri, token, db_name, timeout)
            cls._clients[key] = (client, 1)
            return client

    @classmethod
    def release(cls, uri: str, token: str, db_name: str) -> None:
        key = (uri, token, db_name)
        with cls._lock:
            client, users = cls._clients.get(key, (None, 0))
            if client is None:
                return
            if users > 1:
                cls._clients[key] = (client, users - 1)
                return
            del cls._clients[key]
        client.close()
        if "://" not in uri:
            _release_lite(uri)


def _release_lite(uri: str) -> None:
    """Stop this process's Milvus Lite server on `uri` and close its data (releasing the path's lock).
    Milvus Lite's own release_server waits 2 s of gRPC grace on every call; our client is closed, so nothing
    is in flight and the server stops at once."""
    from milvus_lite.server_manager import server_manager_instance as manager

    servers = getattr(manager, "_servers", None)
    lock = getattr(manager, "_lock", None)
    if not isinstance(servers, dict) or lock is None:
        manager.release_server(uri)
        return
    with lock:
        entry = servers.pop(os.path.abspath(uri), None)
    if entry is not None:
        server, db, _port = entry
        server.stop(grace=None)
        db.close()


def _connect(uri: str, token: str, db_name: str, timeout: float) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise ConfigError(
            f"index.backend=milvus needs pymilvus: pip install 'mmrag[milvus]' ({exc})"
        ) from exc
    local = "://" not in uri
    if local:
        _check_lite_path(uri)
    try:
        client = MilvusClient(uri=uri, token=token, db_name=db_name or "", timeout=timeout)
    except Exception as exc:
        if local and _lite_locked(uri):
            raise MilvusError(_locked_message(uri)) from None
        raise MilvusError(f"cannot connect to Milvus at {_shown(uri)}: {_reason(exc)}") from None
    return client


def _check_lite_path(uri: str) -> None:
    from pathlib import Path

    try:
        import milvus_lite  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"index.milvus.uri={uri} is a local path, which needs Milvus Lite: pip install 'mmrag[milvus]' "
            f"({exc})"
        ) from exc
    if not uri.endswith(".db"):
        raise ConfigError(
            f"index.milvus.uri={uri}: a Milvus Lite path must end in .db (e.g. ./milvus.db), or give a "
            "server as http://host:19530"
        )
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    if _lite_locked(uri):
        raise MilvusError(_locked_message(uri))


def _lite_locked(uri: str) -> bool:
    """Whether another process holds Milvus Lite's lock on this path (one process per path)."""
    import fcntl
    from pathlib import Path

    from milvus_lite.server_manager import server_manager_instance

    if os.path.abspath(uri) in server_manager_instance._servers:  # this process has it open
        return False
    lock = Path(uri) / "LOCK"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _locked_message(uri: str) -> str:
    return (
        f"Milvus Lite at {uri} is open in another process (Milvus Lite serves one process per path: "
        "`mmrag serve` and an `mmrag index` on the same data dir cannot both open it). Stop the other "
        f"process, or run Milvus Lite as a server on loopback (`milvus-lite server --data-dir {uri} "
        "--host 127.0.0.1 --port 19530`) and point every process at it with "
        "MMRAG_INDEX__MILVUS__URI=http://127.0.0.1:19530"
    )


def _shown(uri: str) -> str:
    return uri.split("@")[-1] if "://" in uri else uri


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:300]


def collection_name(prefix: str, collection: str, key: str) -> str:
    """Milvus names allow letters, digits and '_': '_' '.' '-' of an mmrag name are spelled _u _d _h, so
    the name maps back one way only and '_s_' (never produced) separates the parts."""
    escaped = collection.replace("_", "_u").replace(".", "_d").replace("-", "_h")
    space, modality = split_key(key)
    return f"{prefix}_{escaped}_s_{space}_{modality}"


def _literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def filter_expression(filters: Filters) -> str:
    """The Milvus filter expression of `filters` (modality is which collection is searched)."""
    parts: list[str] = []
    if filters.document_ids:
        parts.append(f"document_id in [{', '.join(str(i) for i in sorted(filters.document_ids))}]")
    if filters.path_prefixes:
        alternatives = []
        for prefix in filters.path_prefixes:
            folder = prefix.rstrip("/") + "/"
            # strings that start with "folder/" are exactly those in ["folder/", "folder0"): '0' follows '/'
            under = f"(path >= {_literal(folder)} and path < {_literal(folder[:-1] + '0')})"
            alternatives.append(f"(path == {_literal(prefix)} or {under})")
        parts.append("(" + " or ".join(alternatives) + ")")
    for key, value in filters.metadata:
        if isinstance(value, bool):
            literal = "true" if value else "false"
        elif isinstance(value, (int, float)):
            literal = json.dumps(value)
        else:
            literal = _literal(value)
        parts.append(f"meta[{_literal(key)}] == {literal}")
    return " and ".join(parts)


class Store(VectorStore):
    kind = "milvus"
    durable = True
    filters_payload = True

    def __init__(self, settings: Settings, collection: str) -> None:
        super().__init__(settings, collection)
        self.config = settings.index.milvus
        self.uri = settings.milvus_uri
        self.local = "://" not in self.uri
        self.index_type = self.config.index_type_for(self.local)
        if self.local and self.index_type not in MILVUS_LITE_INDEX_TYPES:
            raise ConfigError(
                f"index.milvus.index_type={self.index_type} is not built by Milvus Lite "
                f"({self.uri}); it builds {', '.join(MILVUS_LITE_INDEX_TYPES)}. "
                f"{self.index_type} needs a Milvus server (index.milvus.uri=http://host:19530"
                + (", with GPUs" if self.index_type.startswith("GPU_") else "")
                + ")"
            )
        self._token = self.config.token.get_secret_value() if self.config.token else ""
        self._client: Any = None
        self._keys: dict[str, int] = {}  # key -> dim
        self._models: dict[str, tuple[str, int]] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _SharedClient.acquire(
                self.uri, self._token, self.config.db_name, self.config.timeout_s
            )
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, timeout=self.config.timeout_s, **kwargs)
        except MmragError:
            raise
        except Exception as exc:
            raise MilvusError(f"Milvus ({_shown(self.uri)}) failed to {what}: {_reason(exc)}") from None

    def _name(self, key: str) -> str:
        return collection_name(self.config.collection_prefix, self.collection, key)

    def open(self, models: dict[str, tuple[str, int]]) -> list[OpenedIndex]:
        self._models = dict(models)
        names = set(self._call("list collections", self.client.list_collections))
        opened = []
        for space, (model_id, dim) in models.items():
            for modality in ("image", "text", "page"):
                key = f"{space}.{modality}"
                name = self._name(key)
                if name not in names:
                    continue
                stored_dim = self._dim_of(name)
                if stored_dim != dim:
                    raise ModelMismatchError(
                        f"Milvus collection {name} holds {stored_dim}-d vectors; the {space} space of "
                        f"collection {self.collection!r} is {dim}-d ({model_id}). Another deployment may "
                        "use the same Milvus: give this one its own index.milvus.collection_prefix or "
                        "db_name."
                    )
                self._call("load a collection", self.client.load_collection, name)
                self._keys[key] = dim
                opened.append(OpenedIndex(key))
        return opened

    def _dim_of(self, name: str) -> int:
        described = self._call("describe a collection", self.client.describe_collection, name)
        for field in described["fields"]:
            if field["name"] == "vector":
                return int(field["params"]["dim"])
        raise MilvusError(f"Milvus collection {name} has no 'vector' field: it was not made by mmrag")

    def index_keys(self) -> list[str]:
        return sorted(list(self._keys))

    def ensure(self, key: str, model_id: str, dim: int) -> None:
        if key in self._keys:
            return
        from pymilvus import DataType, MilvusClient

        name = self._name(key)
        if not self._call("look up a collection", self.client.has_collection, name):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("document_id", DataType.INT64)
            schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
            schema.add_field("meta", DataType.JSON)
            index_params = self.client.prepare_index_params()
            index_params.add_index(
                field_name="vector",
                index_type=self.index_type,
                metric_type="IP",  # unit vectors: inner product = cosine, as FAISS
                params=dict(self.config.index_params),
            )
            self._call(
                "create a collection",
                self.client.create_collection,
                name,
                schema=schema,
                index_params=index_params,
                consistency_level=self.config.consistency_level,
            )
            log.info("created Milvus collection %s (%s, %d-d)", name, self.index_type, dim)
        self._call("load a collection", self.client.load_collection, name)
        self._keys[key] = dim

    def upsert(self, key: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[ItemPayload]) -> None:
        name = self._name(key)
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(ids), _UPSERT_BATCH):
            rows = [
                {
                    "id": int(item_id),
                    "vector": vector,  # float32 array: pymilvus packs it without a Python list
                    "document_id": int(payload.document_id),
                    "path": payload.path[:MAX_PATH],
                    "meta": payload.meta,
                }
                for item_id, vector, payload in zip(
                    ids[start : start + _UPSERT_BATCH],
                    vectors[start : start + _UPSERT_BATCH],
                    payloads[start : start + _UPSERT_BATCH],
                    strict=True,
                )
            ]
            self._call("upsert vectors", self.client.upsert, name, rows)

    def delete(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        wanted = [int(i) for i in ids]
        for key in self.index_keys():
            for start in range(0, len(wanted), _UPSERT_BATCH):
                self._call(
                    "delete vectors",
                    self.client.delete,
                    self._name(key),
                    ids=wanted[start : start + _UPSERT_BATCH],
                )

    def search(
        self, key: str, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if key not in self._keys or len(queries) == 0:
            return scores, ids
        params = dict(self.config.search_params)
        if "ef" in params:  # HNSW needs ef >= k
            params["ef"] = max(int(params["ef"]), k)
        expression = filter_expression(where.filters) if where is not None else ""
        results = self._call(
            "search",
            self.client.search,
            self._name(key),
            data=queries.tolist(),
            limit=k,
            filter=expression,
            search_params={"metric_type": "IP", "params": params},
            output_fields=[],
        )
        for row, hits in enumerate(results):
            for column, hit in enumerate(list(hits)[:k]):
                ids[row, column] = int(hit["id"])
                scores[row, column] = float(hit["distance"])
        return scores, ids

    def ids(self, key: str) -> np.ndarray:
        if key not in self._keys:
            return np.empty(0, np.int64)
        iterator = self._call(
            "list ids",
            self.client.query_iterator,
            self._name(key),
            batch_size=_ITERATOR_BATCH,
            filter="",
            output_fields=["id"],
        )
        found: list[int] = []
        try:
            while batch := iterator.next():
                found.extend(int(row["id"]) for row in batch)
        finally:
            iterator.close()
        return np.unique(np.asarray(found, dtype=np.int64))

    def count(self, key: str) -> int:
        if key not in self._keys:
            return 0
        rows = self._call("count", self.client.query, self._name(key), filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def describe(self, key: str) -> IndexInfo:
        name = self._name(key)
        try:
            index_type = str(
                self._call("describe an index", self.client.describe_index, name, "vector")["index_type"]
            )
        except MilvusError:
            index_type = self.index_type
        space, _ = split_key(key)
        model_id, dim = self._models.get(space, ("", self._keys.get(key, 0)))
        return IndexInfo(
            count=self.count(key),
            type=f"milvus {index_type} ({name})",
            model=model_id,
            dim=dim,
            device="milvus-lite" if self.local else _shown(self.uri),
            backend=self.kind,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client = None
            _SharedClient.release(self.uri, self._token, self.config.db_name)
