"""mmrag: multimodal RAG indexing and retrieval for images, scans and PDFs."""

__version__ = "0.1.0"
