"""The source manifest: one row per document, naming the literature it cites."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import MyoQAError

log = logging.getLogger(__name__)

#: File types the loaders understand.
SUPPORTED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".pdf", ".xml", ".nxml"})
REQUIRED_COLUMNS = ("id", "file", "title")
MANIFEST_COLUMNS = (
    "id", "file", "title", "authors", "journal", "year", "doi", "pmid", "pmcid", "url",
    "source_licence", "topics", "related_sources",
)  # fmt: skip


class SourceRecord(BaseModel):
    """Bibliographic record of one source; what a citation shows."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    file: str = Field(min_length=1)
    title: str = Field(min_length=1)
    authors: str = ""
    journal: str = ""
    year: str = ""
    doi: str = ""
    pmid: str = ""
    pmcid: str = ""
    url: str = ""
    source_licence: str = ""
    topics: str = ""
    related_sources: str = ""


@dataclass(frozen=True)
class Problem:
    """A file or manifest row that was not indexed, and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class SourcePlan:
    """What the corpus folder and its manifest say should be indexed."""

    sources: list[tuple[SourceRecord, Path]]
    problems: list[Problem]


def read_manifest(path: Path) -> tuple[list[SourceRecord], list[Problem]]:
    """Read and validate the manifest CSV; bad rows become problems, not exceptions."""
    if not path.is_file():
        raise MyoQAError(
            f"Source manifest {path} not found. Create it with the columns "
            f"{', '.join(MANIFEST_COLUMNS)} (see the README, 'Adding your own PDFs')."
        )
    records: list[SourceRecord] = []
    problems: list[Problem] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MyoQAError(f"{path} lacks the column(s) {', '.join(missing)}.")
        seen: set[str] = set()
        for line_no, row in enumerate(reader, start=2):
            clean = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            label = f"{path.name} line {line_no}"
            try:
                record = SourceRecord(**clean)
            except ValidationError as exc:
                fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
                problems.append(Problem(label, f"invalid or empty field(s): {fields}"))
                continue
            if record.id in seen:
                problems.append(Problem(label, f"duplicate id {record.id!r}"))
                continue
            seen.add(record.id)
            records.append(record)
    return records, problems


def plan_sources(corpus_dir: Path, manifest: Path) -> SourcePlan:
    """Match manifest rows to files in ``corpus_dir``; report each mismatch by name."""
    records, problems = read_manifest(manifest)
    sources: list[tuple[SourceRecord, Path]] = []
    listed: set[Path] = set()
    for record in records:
        file_path = (corpus_dir / record.file).resolve()
        listed.add(file_path)
        if not file_path.is_file():
            problems.append(
                Problem(record.id, f"manifest names {record.file}, which does not exist")
            )
            continue
        if file_path.suffix.lower() not in SUPPORTED_SUFFIXES:
            problems.append(Problem(record.id, f"unsupported file type {file_path.suffix}"))
            continue
        sources.append((record, file_path))
    manifest_path = manifest.resolve()
    for path in sorted(corpus_dir.rglob("*")):
        resolved = path.resolve()
        if (
            path.is_file()
            and path.suffix.lower() in SUPPORTED_SUFFIXES
            and resolved not in listed
            and resolved != manifest_path
            and not any(part.startswith(".") for part in path.relative_to(corpus_dir).parts)
        ):
            problems.append(
                Problem(
                    str(path.relative_to(corpus_dir)),
                    f"no row in {manifest.name}; add one to index it",
                )
            )
    return SourcePlan(sources=sources, problems=problems)
