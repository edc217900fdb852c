"""clipseek: search your own images by describing them."""

from __future__ import annotations

from .collection import Collection, Document, Filter, SearchResult
from .errors import ClipseekError
from .models import Encoder, ModelSpec, available_models, get_spec, load_model
from .tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["ClipseekError", "Collection", "Document", "Encoder", "Filter", "ModelSpec", "SearchResult", "Tokenizer",
           "available_models", "get_spec", "load_model"]
