"""Build or update the index, re-embedding only what changed."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from indexer.bibliography import Reference, index_references, read_bibliography
from indexer.chunking import Chunk, chunk_blocks
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.loaders import load_document
from indexer.settings import Settings
from indexer.sources import Problem, plan_sources
from indexer.store import (
    IndexManifest,
    LoadedIndex,
    SourceEntry,
    index_exists,
    load_index,
    recover,
    verify_files,
    write_index,
)

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What a build did, for the summary line and the tests."""

    index_dir: Path
    sources: int = 0
    pages: int = 0
    chunks: int = 0
    embedded: int = 0
    reused: int = 0
    skipped: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    full_rebuild: bool = False

    def summary(self) -> str:
        return (
            f"Indexed {self.sources} sources ({self.pages} PDF pages) into {self.chunks} chunks: "
            f"{self.embedded} embedded, {self.reused} reused, {len(self.skipped)} skipped, "
            f"{self.seconds:.1f} s -> {self.index_dir}"
        )


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bibliography_hash(settings: Settings) -> str:
    path = settings.paths.bibliography
    return file_hash(path) if path.is_file() else ""


def load_references(settings: Settings) -> tuple[dict[str, Reference], list[Problem]]:
    """The bibliography the citation keys resolve to (none when the file is absent)."""
    path = settings.paths.bibliography
    if not path.is_file():
        return {}, []
    try:
        return index_references(read_bibliography(path)), []
    except MyoQAError as exc:
        return {}, [Problem(path.name, f"bibliography not used: {exc}")]


def up_to_date_manifest(settings: Settings) -> IndexManifest | None:
    """The index's manifest when it already holds exactly what the corpus and settings say.

    Checked without loading the embedding model, so a no-change ``index`` is instant:
    the identity, every source's record and content hash, the files that were skipped
    (unchanged files that still fail are not retried) and the index files' checksums.
    """
    try:
        manifest = verify_files(settings.paths.index_dir)
        plan = plan_sources(settings.paths.corpus_dir, settings.paths.manifest)
    except MyoQAError:
        return None
    dim = manifest.identity.get("embedding_dim")
    if not isinstance(dim, int) or manifest.identity != settings.index_identity(dim):
        return None
    skipped = {p.name: p.reason for p in plan.problems}
    indexed: set[str] = set()
    for record, path in plan.sources:
        digest = file_hash(path)
        entry = manifest.sources.get(record.id)
        if entry is not None and (entry.record, entry.content_hash) == (record, digest):
            indexed.add(record.id)
        elif manifest.skipped_hashes.get(record.file) == digest:
            skipped[record.file] = manifest.skipped[record.file]
        else:
            return None
    if indexed != set(manifest.sources) or skipped != manifest.skipped:
        return None
    if manifest.bibliography_hash != bibliography_hash(settings):
        return None
    return manifest


def is_up_to_date(settings: Settings) -> bool:
    """True when ``index`` would change nothing (see ``up_to_date_manifest``)."""
    return up_to_date_manifest(settings) is not None


def _previous_index(
    settings: Settings, identity: dict[str, object], rebuild: bool
) -> LoadedIndex | None:
    index_dir = settings.paths.index_dir
    if rebuild or not index_exists(index_dir):
        return None
    try:
        return load_index(index_dir, expected_identity=identity)
    except MyoQAError as exc:
        log.warning(
            "Not reusing the existing index: %s Doing a full build.", str(exc).split(". Rebuild")[0]
        )
        return None


def build_index(
    settings: Settings,
    model: EmbeddingModel,
    *,
    rebuild: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Index every source the manifest lists; report and skip the ones that fail.

    Raises:
        MyoQAError: when nothing could be indexed, or with ``strict`` when any
            file was skipped; the existing index is then left untouched.
    """
    started = time.perf_counter()
    recover(settings.paths.index_dir)  # what an interrupted build left behind
    if settings.chunking.max_tokens + 2 > model.max_seq_length:
        raise MyoQAError(
            f"chunking.max_tokens={settings.chunking.max_tokens} does not fit the embedding model's "
            f"maximum of {model.max_seq_length} word pieces (2 are special tokens)."
        )
    identity = settings.index_identity(model.dim)
    plan = plan_sources(settings.paths.corpus_dir, settings.paths.manifest)
    report = BuildReport(index_dir=settings.paths.index_dir, skipped=list(plan.problems))
    references, bib_problems = load_references(settings)
    report.skipped.extend(bib_problems)
    previous = _previous_index(settings, identity, rebuild)
    report.full_rebuild = previous is None

    # content-hash cache: chunk id -> (chunk vector, its sentence vectors)
    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    previous_chunks: dict[str, list[Chunk]] = {}
    if previous is not None:
        vectors = previous.all_vectors()
        sentence_vectors = previous.all_sentence_vectors()
        for row, (chunk, offset) in enumerate(
            zip(previous.chunks, previous.sentence_offsets(), strict=True)
        ):
            cached[chunk.chunk_id] = (
                vectors[row],
                sentence_vectors[offset : offset + len(chunk.sentences)],
            )
            previous_chunks.setdefault(chunk.source_id, []).append(chunk)

    entries: dict[str, SourceEntry] = {}
    skipped_hashes: dict[str, str] = {}
    chunks: list[Chunk] = []
    for record, path in plan.sources:
        digest = file_hash(path)
        old = previous.manifest.sources.get(record.id) if previous else None
        if old is not None and old.content_hash == digest and record.id in previous_chunks:
            source_chunks = previous_chunks[record.id]
            entries[record.id] = old.model_copy(update={"record": record})
            chunks.extend(source_chunks)
            report.pages += old.pages
            continue
        try:
            document = load_document(path)
            source_chunks = chunk_blocks(
                record.id,
                document.blocks,
                model.count_tokens,
                settings.chunking.max_tokens,
                settings.chunking.overlap_tokens,
            )
        except MyoQAError as exc:
            report.skipped.append(Problem(record.file, str(exc)))
            skipped_hashes[record.file] = digest
            continue
        for warning in document.warnings:
            report.warnings.append(f"{record.file}: {warning}")
            log.debug("%s: %s", record.file, warning)  # the report carries it; the CLI prints it
        if not source_chunks:
            report.skipped.append(Problem(record.file, "no text to index"))
            skipped_hashes[record.file] = digest
            continue
        entries[record.id] = SourceEntry(
            record=record,
            content_hash=digest,
            pages=document.pages,
            n_chunks=len(source_chunks),
            warnings=document.warnings,
        )
        chunks.extend(source_chunks)
        report.pages += document.pages

    unresolved: dict[str, set[str]] = {}
    for chunk in chunks:
        for keys in chunk.sentence_sources:
            for key in keys:
                if key not in references:
                    unresolved.setdefault(entries[chunk.source_id].record.file, set()).add(key)
    for name, missing in sorted(unresolved.items()):
        warning = f"{name}: citation key(s) not in the bibliography: {', '.join(sorted(missing))}"
        report.warnings.append(warning)
        log.warning(warning)
    for problem in report.skipped:
        log.debug("Skipped %s", problem)  # the report carries it; the CLI prints it once
    if not chunks:
        raise MyoQAError(
            "Nothing could be indexed: "
            + ("; ".join(map(str, report.skipped)) or "the manifest lists no sources")
        )
    if strict and report.skipped:
        raise MyoQAError(
            f"--strict: {len(report.skipped)} file(s) could not be indexed: "
            + "; ".join(map(str, report.skipped))
        )

    to_embed = [c for c in chunks if c.chunk_id not in cached]
    texts = [c.embedding_text() for c in to_embed]
    for chunk in to_embed:
        texts.extend(chunk.sentence_texts())
    fresh = model.embed_documents(
        texts, batch_size=settings.embedding.batch_size, progress=progress
    )
    row = len(to_embed)
    for position, chunk in enumerate(to_embed):
        n = len(chunk.sentences)
        cached[chunk.chunk_id] = (fresh[position], fresh[row : row + n])
        row += n
    matrix = np.vstack([cached[c.chunk_id][0] for c in chunks]).astype(np.float32)
    sentence_matrix = np.vstack([cached[c.chunk_id][1] for c in chunks]).astype(np.float32)

    report.sources = len(entries)
    report.chunks = len(chunks)
    report.embedded = len(to_embed)
    report.reused = len(chunks) - len(to_embed)
    report.seconds = time.perf_counter() - started
    manifest = IndexManifest(
        identity=identity,
        sources=entries,
        skipped={p.name: p.reason for p in report.skipped},
        skipped_hashes=skipped_hashes,
        n_chunks=len(chunks),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(report.seconds, 3),
        references=references,
        bibliography_hash=bibliography_hash(settings),
    )
    write_index(settings.paths.index_dir, manifest, chunks, matrix, sentence_matrix)
    report.seconds = time.perf_counter() - started
    log.debug(report.summary())
    return report
