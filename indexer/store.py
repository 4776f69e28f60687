"""The on-disk index: FAISS vectors, chunks as JSONL, and a manifest. No pickle.

Layout of ``index_dir``::

    current -> v-20261202T063000Z-1a2b   symlink to the version being served
    v-20261202T063000Z-1a2b/
        manifest.json   identity (model, dimension, chunking, schema), sources, the
                        bibliography, build stats and the SHA-256 of each file below
        chunks.jsonl    one Chunk per line, in vector order
        vectors.faiss   faiss.IndexFlatIP over L2-normalised chunk vectors
        sentences.faiss the same for every sentence of every chunk, in chunk order
    .lock               held by a build while it writes (and by a tidy-up)

A build writes a new ``.building-*`` folder, renames it to ``v-*`` and then points
``current`` at it by renaming a fresh symlink over the old one: rename(2) is atomic,
so a reader sees either the old version or the new one, never a mix or nothing.
Anything a killed build leaves behind (``.building-*``, ``.current-*``, versions no
longer current, the flat files of the pre-symlink layout and its sibling
``.index.old-*`` / ``.index.building-*`` folders) is removed by the next build or
server start. Loading verifies every file against its checksum.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
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
#: The files whose SHA-256 the manifest records (the manifest itself is checked by content).
DATA_FILES = (VECTORS_FILE, SENTENCES_FILE, CHUNKS_FILE)
CURRENT_LINK = "current"
VERSION_PREFIX = "v-"
BUILDING_PREFIX = ".building-"
LINK_PREFIX = ".current-"
LOCK_FILE = ".lock"
REBUILD_HINT = "Rebuild it with `myositis-qa index --rebuild` (or `make index`)."


def _checkpoint(step: str) -> None:
    """Called after each step of ``write_index``; the crash tests replace it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    #: Content hash of each skipped file (name -> SHA-256; "" when it was missing),
    #: so an unchanged corpus with skipped files is still "up to date".
    skipped_hashes: dict[str, str] = Field(default_factory=dict)
    n_chunks: int
    built_at: str
    build_seconds: float = 0.0
    #: SHA-256 of each file in ``DATA_FILES``, written by ``write_index``.
    checksums: dict[str, str] = Field(default_factory=dict)
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


# --- where the current version lives ------------------------------------------------------


def current_version(index_dir: Path) -> Path | None:
    """The folder holding the index being served, or None when there is none.

    ``index_dir/current`` (a symlink) names it; an index written before the symlink
    layout keeps its files directly in ``index_dir`` and is still found.
    """
    link = index_dir / CURRENT_LINK
    if link.is_symlink():
        target = Path(os.readlink(link))
        return target if target.is_absolute() else index_dir / target
    if link.is_dir():  # the folder was copied without keeping symlinks (cp -r)
        return link
    if (index_dir / MANIFEST_FILE).is_file():
        return index_dir
    return None


def index_exists(index_dir: Path) -> bool:
    """True when ``index_dir`` holds a built index (it may still fail to load)."""
    version = current_version(index_dir)
    return version is not None and (version / MANIFEST_FILE).is_file()


def index_signature(index_dir: Path) -> str | None:
    """Changes whenever the served index changes (a rebuild, or a file edited in place).

    Cheap (a readlink and a few stats), so a server can poll it.
    """
    version = current_version(index_dir)
    if version is None:
        return None
    parts = [str(version)]
    for name in (MANIFEST_FILE, *DATA_FILES):
        try:
            stat = (version / name).stat()
        except OSError:
            parts.append(f"{name}:-")
            continue
        parts.append(f"{name}:{stat.st_mtime_ns}:{stat.st_size}")
    return "|".join(parts)


# --- writing ----------------------------------------------------------------------------------


def disk_error(folder: Path, exc: OSError) -> MyoQAError:
    """One line naming the folder and the cause (full disk, read-only, no permission...)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = " Free some space there, or point paths.index_dir (--index-dir) at another disk."
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = (
            " Make it writable, or point paths.index_dir (--index-dir) at a folder you can write."
        )
    message = f"Cannot write the index in {folder}: {cause}{f' ({code})' if code else ''}.{hint}"
    return MyoQAError(" ".join(message.split()))


@contextmanager
def _disk_errors(folder: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise disk_error(folder, exc) from exc


@contextmanager
def index_lock(index_dir: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``index_dir/.lock`` (an advisory flock); yields False when not blocking and busy."""
    fd = os.open(index_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file (the one place the index's bytes reach the disk)."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _serialize(dim: int, vectors: np.ndarray) -> bytes:
    import faiss

    return bytes(faiss.serialize_index(_flat_index(dim, vectors)))


def write_index(
    index_dir: Path,
    manifest: IndexManifest,
    chunks: list[Chunk],
    vectors: np.ndarray,
    sentence_vectors: np.ndarray,
) -> Path:
    """Write a new version of the index and make it current in one atomic rename.

    Returns:
        The new version's folder.

    Raises:
        MyoQAError: When the disk refuses (full, read-only, no permission): one line
            naming the folder and the cause. The previous index is left as it was.
    """
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    if sum(len(c.sentences) for c in chunks) != len(sentence_vectors):
        raise ValueError("sentence vectors do not match the chunks' sentences")
    dim = int(manifest.identity["embedding_dim"])
    files = {
        VECTORS_FILE: _serialize(dim, vectors),
        SENTENCES_FILE: _serialize(dim, sentence_vectors),
        CHUNKS_FILE: "".join(c.model_dump_json() + "\n" for c in chunks).encode("utf-8"),
    }
    manifest = manifest.model_copy(
        update={"checksums": {name: sha256_bytes(data) for name, data in files.items()}}
    )
    index_dir = index_dir.absolute()
    with _disk_errors(index_dir):
        index_dir.mkdir(parents=True, exist_ok=True)
        with index_lock(index_dir):
            _checkpoint("locked")
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
            tmp = Path(tempfile.mkdtemp(prefix=BUILDING_PREFIX, dir=index_dir))
            version = index_dir / f"{VERSION_PREFIX}{stamp}"
            link = index_dir / f"{LINK_PREFIX}{stamp}"
            try:
                tmp.chmod(0o755)
                for name, data in files.items():
                    _write_file(tmp / name, data)
                    _checkpoint(f"wrote {name}")
                _write_file(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
                _fsync_dir(tmp)
                _checkpoint(f"wrote {MANIFEST_FILE}")
                tmp.rename(version)
                _checkpoint("renamed the version folder")
                os.symlink(version.name, link)
                _checkpoint("made the new link")
                current = index_dir / CURRENT_LINK
                if current.is_dir() and not current.is_symlink():  # a copy made by cp -r
                    current.rename(index_dir / f"{VERSION_PREFIX}{stamp}-copied")
                os.replace(link, index_dir / CURRENT_LINK)  # the one atomic step
                _fsync_dir(index_dir)
                _checkpoint("swapped current")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                with suppress(OSError):  # keep the original error
                    link.unlink(missing_ok=True)
                if version.exists() and current_version(index_dir) != version:
                    shutil.rmtree(version, ignore_errors=True)
                raise
            _tidy(index_dir)
            _checkpoint("tidied")
    log.debug("Wrote index version %s", version)
    return version


# --- tidying up after interrupted builds --------------------------------------------------------


def leftovers(index_dir: Path) -> list[Path]:
    """What interrupted or superseded builds left in and beside ``index_dir``."""
    found: list[Path] = []
    version = current_version(index_dir)
    if index_dir.is_dir():
        for path in index_dir.iterdir():
            name = path.name
            unfinished = name.startswith((BUILDING_PREFIX, LINK_PREFIX))
            superseded = name.startswith(VERSION_PREFIX) and path != version
            # flat files of the pre-symlink layout, once a version is current
            flat = version != index_dir and name in (MANIFEST_FILE, *DATA_FILES)
            if unfinished or superseded or flat:
                found.append(path)
    parent = index_dir.parent
    if parent.is_dir():
        legacy = (f".{index_dir.name}.old-", f".{index_dir.name}.building-")
        found.extend(p for p in parent.iterdir() if p.name.startswith(legacy))
    return sorted(found)


def _tidy(index_dir: Path, level: int = logging.DEBUG) -> None:
    for path in leftovers(index_dir):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            log.warning("Could not remove %s left by an earlier build: %s", path, exc)
        else:
            log.log(level, "Removed %s, left by an interrupted or earlier build", path.name)


def recover(index_dir: Path) -> None:
    """Remove what interrupted builds left, unless a build is running now.

    The current version is never touched, so this is safe at every server start.
    Never raises: a read-only index folder is simply left as it is.
    """
    if not index_dir.is_dir():
        return
    try:
        with index_lock(index_dir, blocking=False) as locked:
            if locked:
                _tidy(index_dir, logging.INFO)
    except OSError as exc:
        log.debug("Not tidying %s: %s", index_dir, exc)


# --- reading ----------------------------------------------------------------------------------


def _no_index(index_dir: Path) -> MyoQAError:
    message = f"No index found at {index_dir}. Build it with `myositis-qa index` (or `make index`)."
    stale = [p.name for p in leftovers(index_dir)] if index_dir.parent.is_dir() else []
    if stale:
        message += f" ({', '.join(stale)} left by an interrupted build will be removed.)"
    return MyoQAError(message)


def _parse_manifest(path: Path, index_dir: Path) -> IndexManifest:
    try:
        return IndexManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _no_index(index_dir) from exc
    except (ValidationError, ValueError, OSError) as exc:
        raise MyoQAError(
            f"The index at {index_dir} is damaged or from another version. {REBUILD_HINT}"
        ) from exc


def read_manifest(index_dir: Path) -> IndexManifest:
    version = current_version(index_dir)
    if version is None:
        raise _no_index(index_dir)
    return _parse_manifest(version / MANIFEST_FILE, index_dir)


def _read_verified(version: Path, manifest: IndexManifest, index_dir: Path) -> dict[str, bytes]:
    """Each data file's bytes, refused unless they match the manifest's checksum."""
    if not manifest.checksums:
        raise MyoQAError(
            f"The index at {index_dir} was written without file checksums (by an older "
            f"version), so it cannot be checked for damage. {REBUILD_HINT}"
        )
    data: dict[str, bytes] = {}
    for name in DATA_FILES:
        try:
            raw = (version / name).read_bytes()
        except OSError as exc:
            raise MyoQAError(
                f"The index at {index_dir} is incomplete: cannot read {name} "
                f"({exc.strerror or exc}). {REBUILD_HINT}"
            ) from exc
        if sha256_bytes(raw) != manifest.checksums.get(name):
            raise MyoQAError(
                f"The index at {index_dir} is damaged: {name} does not match the checksum "
                f"recorded when it was built (changed or corrupted since), so it is not served. "
                f"{REBUILD_HINT}"
            )
        data[name] = raw
    return data


def verify_files(index_dir: Path) -> IndexManifest:
    """The manifest, after checking every data file against its checksum (no parsing)."""
    version = current_version(index_dir)
    if version is None:
        raise _no_index(index_dir)
    manifest = _parse_manifest(version / MANIFEST_FILE, index_dir)
    _read_verified(version, manifest, index_dir)
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
    """Load the current index; with ``expected_identity``, refuse one built with other settings.

    Every file is checked against the checksum in the manifest, the counts against each
    other, and every chunk's source against the manifest, so a damaged or edited index
    is refused with a message rather than quoted.
    """
    import faiss

    version = current_version(index_dir)
    if version is None:
        raise _no_index(index_dir)
    manifest = _parse_manifest(version / MANIFEST_FILE, index_dir)
    if expected_identity is not None:
        check_identity(manifest, expected_identity, index_dir)
    data = _read_verified(version, manifest, index_dir)
    try:
        chunks = [
            Chunk.model_validate_json(line)
            for line in data[CHUNKS_FILE].decode("utf-8").splitlines()
            if line.strip()
        ]
        vectors = faiss.deserialize_index(np.frombuffer(data[VECTORS_FILE], dtype=np.uint8))
        sentence_vectors = faiss.deserialize_index(
            np.frombuffer(data[SENTENCES_FILE], dtype=np.uint8)
        )
    except (ValidationError, ValueError, RuntimeError) as exc:
        raise MyoQAError(
            f"The index at {index_dir} is damaged ({type(exc).__name__}). {REBUILD_HINT}"
        ) from exc
    if not (vectors.ntotal == len(chunks) == manifest.n_chunks):
        raise MyoQAError(
            f"The index at {index_dir} is inconsistent: the manifest lists {manifest.n_chunks} "
            f"chunks, {CHUNKS_FILE} holds {len(chunks)} and {VECTORS_FILE} {vectors.ntotal} "
            f"vectors. {REBUILD_HINT}"
        )
    n_sentences = sum(len(c.sentences) for c in chunks)
    if sentence_vectors.ntotal != n_sentences:
        raise MyoQAError(
            f"The index at {index_dir} is inconsistent: the chunks hold {n_sentences} sentences "
            f"but {SENTENCES_FILE} has {sentence_vectors.ntotal} vectors. {REBUILD_HINT}"
        )
    if vectors.d != manifest.identity.get("embedding_dim") or sentence_vectors.d != vectors.d:
        raise MyoQAError(f"The index at {index_dir} has vectors of the wrong size. {REBUILD_HINT}")
    missing = sorted({c.source_id for c in chunks} - set(manifest.sources))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise MyoQAError(
            f"The index at {index_dir} is inconsistent: its chunks quote source(s) {shown} "
            f"that its manifest does not list, so they could not be cited. {REBUILD_HINT}"
        )
    return LoadedIndex(
        manifest=manifest, chunks=chunks, vectors=vectors, sentence_vectors=sentence_vectors
    )
