"""The on-disk index: FAISS vectors, chunks as JSONL, and a manifest. No pickle.

Layout of ``index_dir``::

    manifest.json   identity (model, dimension, chunking, schema), sources, bibliography, build stats
    chunks.jsonl    one Chunk per line, in vector order
    vectors.faiss   faiss.IndexFlatIP over L2-normalised chunk vectors
    sentences.faiss the same for every sentence of every chunk, in chunk order

A build writes a sibling temporary folder and swaps it in with renames, so an
interrupted build leaves the previous index as it was.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.bibliography import Reference
from indexer.chunking import Chunk
from indexer.errors import MyoQAError
from indexer.settings import SCHEMA_VERSION
from indexer.sources import SourceRecord

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
CHUNKS_FILE = "chunks.jsonl"
VECTORS_FILE = "vectors.faiss"
SENTENCES_FILE = "sentences.faiss"
REBUILD_HINT = "Rebuild it with `myositis-qa index --rebuild` (or `make index`)."


class SourceEntry(BaseModel):
    """One indexed source: its record, the hash of its content and counts."""

    model_config = ConfigDict(extra="forbid")

    record: SourceRecord
    content_hash: str
    pages: int = 0
    n_chunks: int = 0
    warnings: list[str] = Field(default_factory=list)


class IndexManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: dict[str, Any]
    sources: dict[str, SourceEntry]
    skipped: dict[str, str] = Field(default_factory=dict)
    n_chunks: int
    built_at: str
    build_seconds: float = 0.0
    #: The bibliography the sentences' citation keys resolve to, and its file's hash.
    references: dict[str, Reference] = Field(default_factory=dict)
    bibliography_hash: str = ""


@dataclass
class LoadedIndex:
    manifest: IndexManifest
    chunks: list[Chunk]
    vectors: Any  # faiss.Index over chunks
    sentence_vectors: Any  # faiss.Index over sentences, chunk by chunk

    def source(self, source_id: str) -> SourceRecord:
        return self.manifest.sources[source_id].record

    def reference(self, key: str) -> Reference | None:
        """The bibliography entry of a citation key, or None when it does not resolve."""
        return self.manifest.references.get(key)

    def all_vectors(self) -> np.ndarray:
        return _matrix(self.vectors)

    def all_sentence_vectors(self) -> np.ndarray:
        return _matrix(self.sentence_vectors)

    def sentence_offsets(self) -> list[int]:
        """Row of each chunk's first sentence in the sentence matrix."""
        offsets, row = [], 0
        for chunk in self.chunks:
            offsets.append(row)
            row += len(chunk.sentences)
        return offsets


def _matrix(index: Any) -> np.ndarray:
    return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


def _flat_index(dim: int, vectors: np.ndarray) -> Any:
    import faiss

    flat = faiss.IndexFlatIP(dim)
    if len(vectors):
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat


def write_index(
    index_dir: Path,
    manifest: IndexManifest,
    chunks: list[Chunk],
    vectors: np.ndarray,
    sentence_vectors: np.ndarray,
) -> None:
    """Write the index atomically: build beside ``index_dir``, then swap it in."""
    import faiss

    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    if sum(len(c.sentences) for c in chunks) != len(sentence_vectors):
        raise ValueError("sentence vectors do not match the chunks' sentences")
    index_dir = index_dir.resolve()
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.building-", dir=index_dir.parent))
    try:
        tmp.chmod(0o755)
        dim = int(manifest.identity["embedding_dim"])
        faiss.write_index(_flat_index(dim, vectors), str(tmp / VECTORS_FILE))
        faiss.write_index(_flat_index(dim, sentence_vectors), str(tmp / SENTENCES_FILE))
        with (tmp / CHUNKS_FILE).open("w", encoding="utf-8") as handle:
            for chunk in chunks:
                handle.write(chunk.model_dump_json() + "\n")
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        old = None
        if index_dir.exists():
            old = index_dir.with_name(f".{index_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            index_dir.rename(old)
        tmp.rename(index_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(index_dir: Path) -> IndexManifest:
    path = index_dir / MANIFEST_FILE
    if not path.is_file():
        raise MyoQAError(
            f"No index found at {index_dir}. Build it with `myositis-qa index` (or `make index`)."
        )
    try:
        manifest = IndexManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise MyoQAError(
            f"The index at {index_dir} is damaged or from another version. {REBUILD_HINT}"
        ) from exc
    return manifest


def check_identity(manifest: IndexManifest, expected: dict[str, Any], index_dir: Path) -> None:
    """Refuse an index built with other settings, naming what differs."""
    found = manifest.identity
    if found.get("schema_version") != SCHEMA_VERSION:
        raise MyoQAError(
            f"The index at {index_dir} uses schema version {found.get('schema_version')}, "
            f"this program needs {SCHEMA_VERSION}. {REBUILD_HINT}"
        )
    diffs = [
        f"{key}: index has {found.get(key)!r}, settings say {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    if diffs:
        raise MyoQAError(
            f"The index at {index_dir} was built with other settings ({'; '.join(diffs)}). {REBUILD_HINT}"
        )


def load_index(index_dir: Path, expected_identity: dict[str, Any] | None = None) -> LoadedIndex:
    """Load an index; with ``expected_identity``, refuse one built with other settings."""
    import faiss

    manifest = read_manifest(index_dir)
    if expected_identity is not None:
        check_identity(manifest, expected_identity, index_dir)
    try:
        chunks = [
            Chunk.model_validate_json(line)
            for line in (index_dir / CHUNKS_FILE).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        vectors = faiss.read_index(str(index_dir / VECTORS_FILE))
        sentence_vectors = faiss.read_index(str(index_dir / SENTENCES_FILE))
    except (OSError, ValidationError, ValueError, RuntimeError) as exc:
        raise MyoQAError(
            f"The index at {index_dir} is incomplete or damaged ({exc}). {REBUILD_HINT}"
        ) from exc
    if vectors.ntotal != len(chunks) or len(chunks) != manifest.n_chunks:
        raise MyoQAError(
            f"The index at {index_dir} is inconsistent ({vectors.ntotal} vectors, {len(chunks)} chunks). "
            f"{REBUILD_HINT}"
        )
    if sentence_vectors.ntotal != sum(len(c.sentences) for c in chunks):
        raise MyoQAError(
            f"The index at {index_dir} is inconsistent (sentence vectors). {REBUILD_HINT}"
        )
    if vectors.d != manifest.identity.get("embedding_dim"):
        raise MyoQAError(f"The index at {index_dir} has vectors of the wrong size. {REBUILD_HINT}")
    return LoadedIndex(
        manifest=manifest, chunks=chunks, vectors=vectors, sentence_vectors=sentence_vectors
    )
