"""The calculator's citations against a built index: look up, check and refresh chunk ids.

A chunk id is a hash of the source id and the chunk text, so editing a digest (even
adding citation markers the loader strips, or re-wrapping a paragraph) can change
the id of the passage a table row cites. ``refresh_chunk_ids`` finds, for every row,
the indexed passage of the row's source that contains the row's quote, and
``check_table`` reports every row whose chunk is missing or no longer states it.
``myositis-qa criteria-ids`` runs both from the command line. ``Calculator`` is what the
tab, the API and the CLI use: the pure scoring of ``app.qa.criteria`` with the
passages of the index attached.

Only ``manifest.json`` and ``chunks.jsonl`` are read (no vectors, no model).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.qa.criteria import (
    Case,
    CitedRow,
    Classification,
    CriteriaTable,
    CutoffRow,
    ItemRow,
    R,
    ScoreBand,
    attach_citations,
    classify,
    load_table,
    score_band,
)
from indexer.bibliography import Reference
from indexer.chunking import Chunk
from indexer.errors import MyoQAError
from indexer.sources import SourceRecord
from indexer.store import CHUNKS_FILE, REBUILD_HINT, current_version, read_manifest

log = logging.getLogger(__name__)

_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class IndexPassages:
    """The chunks and source records of one index, by id."""

    chunks: dict[str, Chunk]
    records: dict[str, SourceRecord]
    #: The bibliography the chunks' citation keys resolve to.
    references: dict[str, Reference] = field(default_factory=dict)
    #: Chunks in index order (for the refresh, which prefers the first match).
    ordered: list[Chunk] = field(default_factory=list)


def read_passages(index_dir: Path) -> IndexPassages:
    """Read an index's chunks and source records.

    Raises:
        MyoQAError: No index, or a damaged one (the message says how to rebuild).
    """
    manifest = read_manifest(index_dir)
    version = current_version(index_dir) or index_dir  # index/current -> v-<stamp>/
    path = version / CHUNKS_FILE
    try:
        ordered = [
            Chunk.model_validate_json(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, ValidationError, ValueError) as exc:
        raise MyoQAError(
            f"The index at {index_dir} is incomplete or damaged ({exc}). {REBUILD_HINT}"
        ) from exc
    return IndexPassages(
        chunks={c.chunk_id: c for c in ordered},
        records={sid: entry.record for sid, entry in manifest.sources.items()},
        references=dict(manifest.references),
        ordered=ordered,
    )


class PassageSource:
    """The index's passages for the tab and the API, re-read when the index is rebuilt.

    ``get()`` returns None (and ``error`` says why) when the index cannot be read, so
    the calculator still scores and shows each row's quote.
    """

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._passages: IndexPassages | None = None

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            version = current_version(self.index_dir) or self.index_dir
            stat = (version / CHUNKS_FILE).stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def get(self) -> IndexPassages | None:
        stamp = self._current_stamp()
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return self._passages
            try:
                self._passages = read_passages(self.index_dir)
                self.error = None
            except MyoQAError as exc:
                self._passages = None
                self.error = str(exc)
                log.warning("The calculator cannot show passages: %s", exc)
            self._stamp = stamp if self._passages is not None else None
            return self._passages


def _normalised(text: str) -> str:
    return _SPACE_RE.sub(" ", text).strip()


def _numbers(row: CitedRow) -> list[str]:
    """The numbers a row's passage must state: its weights or cut-off scores."""
    if isinstance(row, ItemRow | CutoffRow):
        values = [row.without_biopsy, row.with_biopsy]
        return [f"{v:g}" if v % 1 else f"{v:.1f}" for v in values if v is not None]
    return []


def _states(text: str, number: str) -> bool:
    """Whether ``text`` has ``number`` as a number of its own (1.3 is not in 21.3 or 1.35)."""
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text) is not None


def check_table(table: CriteriaTable, passages: IndexPassages) -> list[str]:
    """Every problem with the table's citations against an index (empty when all is well)."""
    problems = []
    for row in table.rows():
        chunk = passages.chunks.get(row.chunk_id)
        if row.quote != _normalised(row.quote):
            problems.append(f"{row.id}: the quote has line breaks or double spaces")
        for number in _numbers(row):
            if not _states(row.quote, number):
                problems.append(f"{row.id}: the quote does not state {number}")
        if chunk is None:
            problems.append(
                f"{row.id}: chunk {row.chunk_id} is not in the index (run `myositis-qa "
                "criteria-ids` to refresh the chunk ids from the index)"
            )
            continue
        if chunk.source_id != row.source_id:
            problems.append(
                f"{row.id}: chunk {row.chunk_id} is from {chunk.source_id}, not {row.source_id}"
            )
        if row.quote not in chunk.text:
            problems.append(
                f"{row.id}: chunk {row.chunk_id} does not contain the quote {row.quote!r}"
            )
        for number in _numbers(row):
            if not _states(chunk.text, number):
                problems.append(f"{row.id}: chunk {row.chunk_id} does not state {number}")
    return problems


@dataclass
class Refresh:
    """What ``refresh_chunk_ids`` found."""

    data: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def refresh_chunk_ids(data: Mapping[str, Any], passages: IndexPassages) -> Refresh:
    """Point each row at the indexed passage of its source that contains its quote.

    A row whose current chunk still contains the quote keeps it (overlapping chunks
    may both contain a sentence); otherwise the first such chunk in index order is
    taken. A quote found in no chunk of its source is a problem, and the row is left
    as it was.

    Args:
        data: The table as loaded from its JSON file (not modified).
        passages: The built index's chunks.
    """
    out: dict[str, Any] = json.loads(json.dumps(data))
    refresh = Refresh(data=out)
    for section in ("items", "cutoffs", "statements"):
        for row in out.get(section, []):
            quote = _normalised(row["quote"])
            current = passages.chunks.get(row["chunk_id"])
            if current is not None and quote in _normalised(current.text):
                continue
            matches = [
                c
                for c in passages.ordered
                if c.source_id == row["source_id"] and quote in _normalised(c.text)
            ]
            if not matches:
                refresh.problems.append(
                    f"{row['id']}: no passage of {row['source_id']} contains {row['quote']!r}; "
                    "update the row's quote to the corpus text"
                )
                continue
            refresh.changed.append(f"{row['id']}: {row['chunk_id']} -> {matches[0].chunk_id}")
            row["chunk_id"] = matches[0].chunk_id
    return refresh


def write_table(path: Path, data: Mapping[str, Any]) -> None:
    """Write the table JSON as it is kept in the repository (2-space indent, UTF-8)."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class Calculator:
    """The calculator as the tab, the API and the CLI run it: scores cited to the index.

    Args:
        index_dir: The index whose passages the results cite; when it cannot be read the
            results still carry each row's quote, and ``passages_error`` says why.
    """

    def __init__(self, index_dir: Path, table: CriteriaTable | None = None) -> None:
        self.table = table or load_table()
        self.passages = PassageSource(index_dir)

    @property
    def passages_error(self) -> str | None:
        return self.passages.error

    def _cited(self, result: R) -> R:
        found = self.passages.get()
        if found is None:
            return result
        return attach_citations(result, found.chunks, found.records, found.references)

    def classify(self, case: Case) -> Classification:
        """Score a case (raises ``MyoQAError`` for an invalid one)."""
        return self._cited(classify(case, self.table))

    def score_band(self, score: float, muscle_biopsy: bool) -> ScoreBand:
        """What a total score means (raises ``MyoQAError`` for an unreachable score)."""
        return self._cited(score_band(score, muscle_biopsy, self.table))
