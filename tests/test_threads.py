"""The `threads` setting: how it resolves, and that torch, FAISS, OpenMP and ONNX Runtime all take it, from
the library call, the CLI option and the environment. Each check that sets process-wide state runs in a fresh
interpreter, so the rest of the suite keeps its own thread counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmrag import threads
from mmrag.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, 1), (2, 1), (4, 3), (5, 5), (8, 8), (16, 8), (128, 8)],
)
def test_auto_leaves_a_core_free_on_small_machines_and_caps_large_ones(
    cores: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.resolve_threads(0) == expected
    assert threads.resolve_threads(3) == 3  # an explicit count is taken as it is


def test_negative_threads_are_refused() -> None:
    with pytest.raises(ValueError, match="threads must be >= 0"):
        threads.resolve_threads(-1)


def test_usable_cores_follows_the_affinity_mask() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this platform")
    assert threads.usable_cores() == len(os.sched_getaffinity(0))


def _run(code: str, env: dict[str, str] | None = None) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "MMRAG_"))}
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**clean, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


_REPORT = """
import json, os, faiss, torch
from mmrag.threads import onnx_threads
print(json.dumps({
    "torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads(), "onnx": onnx_threads(),
    "omp_env": os.environ.get("OMP_NUM_THREADS"), "wait": os.environ.get("OMP_WAIT_POLICY"),
}))
"""
_OCR_SESSION = """
import json
from mmrag.caption.ocr import RapidOcrEngine
ocr = RapidOcrEngine()
ocr.load()  # RapidOCR's three ONNX Runtime sessions are made here
sessions = [ocr._engine.text_det.infer, ocr._engine.text_cls.infer, ocr._engine.text_rec.session]
print(json.dumps({"ort_sessions": [s.session.get_session_options().intra_op_num_threads for s in sessions]}))
"""


def test_apply_before_the_libraries_load_reaches_torch_faiss_and_openmp() -> None:
    report = _run("from mmrag.threads import apply_threads\napply_threads(1)\n" + _REPORT)
    assert report == {"torch": 1, "faiss": 1, "onnx": 1, "omp_env": "1", "wait": "PASSIVE"}


def test_apply_after_the_libraries_loaded_still_sets_them() -> None:
    code = "import torch, faiss\nfrom mmrag.threads import apply_threads\napply_threads(1)\n" + _REPORT
    report = _run(code)
    assert (report["torch"], report["faiss"], report["onnx"]) == (1, 1, 1)


def test_rapidocr_sessions_take_the_applied_count() -> None:
    report = _run("from mmrag.threads import apply_threads\napply_threads(1)\n" + _OCR_SESSION)
    assert report == {"ort_sessions": [1, 1, 1]}
    unset = _run(_OCR_SESSION)  # never applied: ONNX Runtime's own default (0 = one per core)
    assert unset == {"ort_sessions": [0, 0, 0]}


def test_auto_keeps_a_thread_count_the_environment_already_gives() -> None:
    code = (
        "import json, os\nfrom mmrag.threads import apply_threads, onnx_threads\n"
        "print(json.dumps([apply_threads(0), onnx_threads(), os.environ['OMP_NUM_THREADS']]))"
    )
    assert _run(code, {"OMP_NUM_THREADS": "1"}) == [1, 1, "1"]
    assert _run(code, {"OMP_NUM_THREADS": "3"}) == [3, 3, "3"]


def test_cli_threads_option_beats_the_setting(tmp_path: Path) -> None:
    # The global option is applied when the command loads its settings, before any model loads.
    code = f"""
import json, os
from mmrag import cli, threads
cli.main(config=None, data_dir={str(tmp_path)!r}, collection=None, verbose=False, threads=1)
settings = cli._settings()
applied, omp = threads.onnx_threads(), os.environ["OMP_NUM_THREADS"]
print(json.dumps({{"setting": settings.threads, "applied": applied, "omp": omp}}))
"""
    assert _run(code, {"MMRAG_THREADS": "2"}) == {"setting": 1, "applied": 1, "omp": "1"}
    assert load_settings(threads=3).threads == 3
