"""PyMuPDF for all of mmrag: `from mmrag.ingest.mupdf import pymupdf`.

PyMuPDF 2 installs pymupdf.layout, which `import pymupdf` imports and which loads an ONNX page-layout model
right away: seconds of start-up (3-4 s measured on the 2-core dev machine) and memory, for a feature mmrag
does not use (it reads text blocks and images). It is kept out unless something imported it already.
MuPDF's own complaints about broken PDFs go to its warning buffer, where mmrag.ingest.pdf quotes them.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("pymupdf.layout", None)  # a None entry makes `import pymupdf.layout` fail, quietly

import pymupdf  # noqa: E402

pymupdf.TOOLS.mupdf_display_errors(False)

__all__ = ["pymupdf"]
