"""Query latency and throughput through the REST service against the same search called in-process.

    python -m bench.bench_http [--items 100000] [--queries 300] [--concurrency 4] [--work DIR] [--out FILE]

One collection of N items (random unit vectors: the index does not care what they mean) is written into a
real mmrag database (documents, items and every item's float16 vector, as ingest leaves them) and a saved
FAISS index, so the service opens it as it opens any collection. The query encoder is open_clip ViT-B-32
with random weights (512-d; the same cost as trained weights). Then, with the same query texts:

- in-process: `Retriever.search(text, k)` in this process, one query at a time, then from C threads;
- HTTP: `mmrag serve` in its own process on loopback, `POST /v1/collections/bench/query` from this process
  with httpx, one request at a time (latency), then from C client threads (throughput).

The two are interleaved (text by text, round by round), so a busy machine slows both alike.

The ratio of the two is what the service's layers cost on top of the search: HTTP, JSON, validation,
the thread-pool hop, the hit's document lookup. Nothing here asserts on time; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# As `mmrag serve` does for the server: the in-process side must not be the one with spinning OpenMP teams.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx
import numpy as np
import yaml

from bench.common import latency_summary, machine_info, random_clip_checkpoint
from bench.query import fill_database, query_texts, random_unit_vectors

COLLECTION = "bench"
SPACE, MODALITY = "clip", "image"
_VECTOR_ROWS = 20_000


def write_collection(settings: Any, items: int, dim: int, model_id: str) -> None:
    """Rows, vectors (the database's copy, so the service's open() finds nothing to repair) and the store."""
    from mmrag.collection import pack_vector
    from mmrag.index.base import open_store
    from mmrag.store.db import Database
    from mmrag.store.items import ItemPayload

    db = Database(settings.db_url)
    fill_database(db, COLLECTION, items)
    vectors = random_unit_vectors(items, dim, seed=items)
    ids = np.arange(1, items + 1, dtype=np.int64)
    with db.engine.begin() as connection:
        for start in range(0, items, _VECTOR_ROWS):
            connection.exec_driver_sql(
                "INSERT INTO item_vectors (item_id, space, vector) VALUES (?, ?, ?)",
                [
                    (int(i), SPACE, pack_vector(v))
                    for i, v in zip(
                        ids[start : start + _VECTOR_ROWS], vectors[start : start + _VECTOR_ROWS], strict=True
                    )
                ],
            )
        connection.exec_driver_sql(
            "INSERT INTO spaces (collection, name, model_id, dim, created_at) VALUES (?, ?, ?, ?, ?)",
            (COLLECTION, SPACE, model_id, dim, "2025-01-01 00:00:00.000000"),
        )
    store = open_store(settings, COLLECTION)  # the configured backend, through the interface
    key = f"{SPACE}.{MODALITY}"
    store.ensure(key, model_id, dim)
    payloads = [ItemPayload(int(i), MODALITY, (int(i) - 1) // 10 + 1, "", {}) for i in ids]
    store.upsert(key, ids, vectors, payloads if store.filters_payload else [])
    store.optimise(lambda _key: (ids, vectors))  # FAISS: IVF from index.ivf_min_items, as after a run
    store.persist(0)
    store.close()
    db.close()


def measure(
    settings: Any, base_url: str, texts: list[str], k: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """The same queries in-process and through HTTP, interleaved (one of each, then the next text; one
    concurrent round of each, then the next round), so that both see the same load on the machine."""
    from mmrag.runtime import open_runtime

    runtime = open_runtime(settings, COLLECTION)
    local = threading.local()

    def in_process(text: str) -> None:
        hits = retriever.search(text, k=k)
        assert len(hits) == k

    def over_http(text: str) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base_url, timeout=60)
        response = client.post(f"/v1/collections/{COLLECTION}/query", json={"text": text, "k": k})
        response.raise_for_status()
        assert len(response.json()["hits"]) == k

    try:
        retriever = runtime.retriever()
        for warm in (in_process, over_http):  # calibration, model, connection: untimed
            warm(texts[0])
        sequential: dict[str, list[float]] = {"in_process": [], "http": []}
        # In-process queries run on a worker thread, as the service runs them: on the main thread, torch's
        # OpenMP threads spin against each other on a busy machine and one query takes several times longer.
        with ThreadPoolExecutor(1) as worker:
            for text in texts:
                for name, fn in (("in_process", in_process), ("http", over_http)):
                    started = time.perf_counter()
                    worker.submit(fn, text).result()
                    sequential[name].append(time.perf_counter() - started)
        concurrent: dict[str, list[float]] = {"in_process": [], "http": []}
        for _ in range(rounds):
            for name, fn in (("in_process", in_process), ("http", over_http)):
                elapsed = _concurrently(fn, texts, concurrency)
                concurrent[name].append(len(texts) / elapsed)
        index = runtime.collection.describe()[f"{SPACE}.{MODALITY}"].type
    finally:
        runtime.close()
    return {
        name: {
            "index": index,
            "sequential": latency_summary(sequential[name]),
            "concurrent_rps": float(np.median(concurrent[name])),
            "concurrent_rps_rounds": concurrent[name],
        }
        for name in ("in_process", "http")
    }


def server_breakdown(metrics: str) -> dict[str, float]:
    """Mean milliseconds per query request on the server, overall and per stage, from its /metrics."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    route = 'route="/v1/collections/{collection}/query"'
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        if (
            name.startswith("mmrag_http_request_duration_seconds_")
            and route in name
            and 'method="POST"' in name
        ):
            key = "request"
        elif name.startswith("mmrag_stage_duration_seconds_") and 'operation="query"' in name:
            key = name.split('stage="')[1].split('"')[0]
        else:
            continue
        if name.split("{")[0].endswith("_sum"):
            sums[key] = float(value)
        elif name.split("{")[0].endswith("_count"):
            counts[key] = float(value)
    means = {key: 1000 * sums[key] / counts[key] for key in sums if counts.get(key)}
    if "request" in means:
        # per request, not per stage call: each request embeds once and searches each index once
        means["outside_stages"] = means["request"] - sum(v for k, v in means.items() if k != "request")
    return means


def _concurrently(fn: Any, texts: list[str], concurrency: int) -> float:
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(fn, texts))
        return time.perf_counter() - started


def start_server(config: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    command = [sys.executable, "-m", "mmrag", "--config", str(config), "serve", "--port", str(port)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})


def wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not get ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="concurrent rounds of each (median kept)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4, help="the service's thread pool (api.workers)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mmrag-bench-http")
    parser.add_argument("--out", type=Path, default=Path("bench/results/http.json"))
    args = parser.parse_args(argv)

    from mmrag.settings import load_settings

    model_id, _ = random_clip_checkpoint()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    config = {
        "data_dir": str(args.work.resolve() / "data"),
        "collection": COLLECTION,
        "models": {"clip": model_id, "device": "cpu"},
        "spaces": {"clip": True, "text": False},
        "generate": {"backend": "none"},
        "api": {"workers": args.workers},
    }
    config_path = args.work / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))
    settings = load_settings(config_path)
    texts = query_texts(args.queries)

    started = time.perf_counter()
    write_collection(settings, args.items, 512, model_id)
    print(f"wrote {args.items} items in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start_server(config_path, port, args.work / "server.log")
    try:
        wait_ready(base_url, server)
        load_before = os.getloadavg()
        measured = measure(settings, base_url, texts, args.k, args.concurrency, args.rounds)
        load_after = os.getloadavg()
        breakdown = server_breakdown(httpx.get(f"{base_url}/metrics", timeout=10).text)
    finally:
        server.terminate()
        server.wait(60)
    in_process, http = measured["in_process"], measured["http"]

    result = {
        "items": args.items,
        "queries": args.queries,
        "k": args.k,
        "concurrency": args.concurrency,
        "service_workers": args.workers,
        "in_process": in_process,
        "http": http,
        "http_vs_in_process": {
            "p50": http["sequential"]["p50_ms"] / in_process["sequential"]["p50_ms"],
            "p99": http["sequential"]["p99_ms"] / in_process["sequential"]["p99_ms"],
            "sequential_qps": http["sequential"]["qps"] / in_process["sequential"]["qps"],
            "concurrent_rps": http["concurrent_rps"] / in_process["concurrent_rps"],
        },
        "server_mean_ms": breakdown,
        "load_average_1min": [load_before[0], load_after[0]],
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return 0


def _print(result: dict[str, Any]) -> None:
    index = result["in_process"]["index"]
    print(f"{result['items']} items ({index} index), {result['queries']} queries, k={result['k']}")
    print(f"{'':14}{'p50 ms':>10}{'p99 ms':>10}{'seq q/s':>10}{'rps @' + str(result['concurrency']):>10}")
    for name in ("in_process", "http"):
        row = result[name]
        seq = row["sequential"]
        print(
            f"{name:14}{seq['p50_ms']:>10.2f}{seq['p99_ms']:>10.2f}{seq['qps']:>10.1f}{row['concurrent_rps']:>10.1f}"
        )
    server = result["server_mean_ms"]
    print("server, mean ms per query: " + ", ".join(f"{k} {v:.2f}" for k, v in server.items()))
    ratio = result["http_vs_in_process"]
    print(
        f"HTTP / in-process: p50 x{ratio['p50']:.2f}, p99 x{ratio['p99']:.2f}, "
        f"sequential q/s x{ratio['sequential_qps']:.2f}, concurrent rps x{ratio['concurrent_rps']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
