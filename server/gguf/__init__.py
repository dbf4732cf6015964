"""GGUF files as models: read (``reader``), tokenizer (``tokenizer``), tensors under Hugging
Face names (``weights``), conversion to a Hugging Face directory (``convert``)."""

from .reader import GgufError, GgufFile, check_supported, open_gguf

__all__ = ["GgufError", "GgufFile", "check_supported", "open_gguf", "is_gguf_path"]


def is_gguf_path(model: str | None) -> bool:
    return bool(model) and str(model).lower().endswith(".gguf")
