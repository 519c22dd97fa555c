"""OCR with RapidOCR (PP-OCRv4 det/cls/rec as ONNX): text lines of scans, screenshots and photos."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image

from mmrag.caption.base import OcrLine
from mmrag.errors import ConfigError, ExtractionError

log = logging.getLogger(__name__)

_PACKAGE = "rapidocr-onnxruntime"
_DEFAULT_MIN_SCORE = 0.5


def _package_version() -> str:
    try:
        return metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        return "missing"


class RapidOcrEngine:
    """RapidOCR, loaded on first use. Keeps lines recognised with score >= min_score."""

    def __init__(self, min_score: float = _DEFAULT_MIN_SCORE) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"OCR min_score must be between 0 and 1, got {min_score}")
        self.min_score = min_score
        # OCR text is cached by ocr_id: a new model version or threshold must not reuse old results.
        suffix = "" if min_score == _DEFAULT_MIN_SCORE else f":min{min_score:g}"
        self.ocr_id = f"{_PACKAGE}@{_package_version()}{suffix}"
        self._load_lock = threading.Lock()
        # RapidOCR.__call__ writes thresholds onto the engine object, so calls share it one at a time.
        self._call_lock = threading.Lock()
        self._engine: Any = None

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def load(self) -> None:
        with self._load_lock:
            if self._engine is not None:
                return
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise ConfigError(f"OCR needs RapidOCR: pip install {_PACKAGE}") from exc
            from mmrag.threads import onnx_threads

            threads = onnx_threads()  # set by the CLI and the service (mmrag.threads); None: ORT's default
            try:
                self._engine = RapidOCR(
                    text_score=self.min_score, **({"intra_op_num_threads": threads} if threads else {})
                )
            except Exception as exc:  # missing or corrupt ONNX files inside the wheel
                raise ConfigError(f"cannot start RapidOCR ({_PACKAGE}): {exc}") from exc

    def read(self, image: Image.Image) -> list[OcrLine]:
        """Text lines found in the image; box is the axis-aligned bbox of each detected quadrilateral."""
        self.load()
        try:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except Exception as exc:
            raise ExtractionError(f"cannot read image for OCR: {type(exc).__name__}: {exc}") from exc
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # RapidOCR follows OpenCV's channel order
        with self._call_lock:
            found, _elapsed = self._engine(bgr)
        lines: list[OcrLine] = []
        for quad, text, score in found or []:
            text = str(text).strip()
            if not text or float(score) < self.min_score:
                continue
            points = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
            x0, y0 = points.min(axis=0)
            x1, y1 = points.max(axis=0)
            lines.append(
                OcrLine(text=text, box=(float(x0), float(y0), float(x1), float(y1)), score=float(score))
            )
        return lines


def _same_row(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    # Lines on one row share most of their height; consecutive rows of a scan overlap by a few pixels
    # (page(): 47-66 and 63-86), so "any overlap" would chain a whole paragraph into one row.
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    shorter = min(a[3] - a[1], b[3] - b[1])
    return shorter > 0 and overlap >= 0.5 * shorter


def ocr_text(lines: Sequence[OcrLine]) -> str:
    """The lines in reading order: rows top to bottom, each row left to right (pieces joined by a space),
    rows joined with newlines."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: ((ln.box[1] + ln.box[3]) / 2, ln.box[0])):
        if rows and _same_row(rows[-1][0].box, line.box):
            rows[-1].append(line)
        else:
            rows.append([line])
    return "\n".join(" ".join(piece.text for piece in sorted(row, key=lambda ln: ln.box[0])) for row in rows)
