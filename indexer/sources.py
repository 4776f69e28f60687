"""The source manifest: one row per document, naming the literature it cites."""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.bibliography import Reference, read_bibliography
from indexer.errors import MyoQAError

log = logging.getLogger(__name__)

#: Reference-manager exports accepted as the manifest (BibTeX, CSL JSON).
EXPORT_SUFFIXES = frozenset({".bib", ".json"})
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
    """Match manifest rows to files in ``corpus_dir``; report each mismatch by name.

    ``manifest`` is a CSV, or a BibTeX / CSL JSON export (see :func:`plan_from_export`).
    """
    if manifest.suffix.lower() in EXPORT_SUFFIXES:
        return plan_from_export(corpus_dir, manifest)
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


# --- reference-manager exports ---------------------------------------------------

_DOI = re.compile(r"10\.\d{4,9}/[^\s\"<>]+")


def _corpus_files(corpus_dir: Path, manifest: Path) -> list[Path]:
    manifest_path = manifest.resolve()
    return [
        path
        for path in sorted(corpus_dir.rglob("*"))
        if path.is_file()
        and path.suffix.lower() in SUPPORTED_SUFFIXES
        and path.resolve() != manifest_path
        and not any(part.startswith(".") for part in path.relative_to(corpus_dir).parts)
    ]


def _norm_doi(doi: str) -> str:
    return doi.strip().rstrip(".").lower()


def _dois_in_file(path: Path) -> set[str]:
    """DOIs named by a file: in its name (``10.1000_xyz.pdf``), PDF metadata or first page."""
    found = {_norm_doi(d) for d in _DOI.findall(path.stem.replace("_", "/"))}
    if path.suffix.lower() != ".pdf":
        return found
    try:
        from pypdf import PdfReader

        reader = PdfReader(path)
        texts = [str(v) for v in (reader.metadata or {}).values()]
        if reader.pages:
            texts.append(reader.pages[0].extract_text() or "")
    except Exception:  # an unreadable PDF is reported when it is loaded, not here
        return found
    for text in texts:
        found |= {_norm_doi(d) for d in _DOI.findall(text)}
    return found


def _safe_id(key: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", key).strip("-._")
    return cleaned or "entry"


def match_export_file(
    ref: Reference, files: list[Path], corpus_dir: Path, doi_index: dict[str, list[Path]]
) -> Path | None:
    """The corpus file an export entry describes: by its file field, DOI or file name."""
    by_name: dict[str, list[Path]] = {}
    for path in files:
        by_name.setdefault(path.name.lower(), []).append(path)
    resolved = {path.resolve(): path for path in files}
    for attached in ref.files:
        attached = attached.replace("\\", "/")
        if Path(attached).suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        for candidate in (corpus_dir / attached, Path(attached)):
            if candidate.resolve() in resolved:
                return resolved[candidate.resolve()]
        same_name = by_name.get(Path(attached).name.lower(), [])
        if len(same_name) == 1:
            return same_name[0]
    if ref.doi and len(doi_index.get(_norm_doi(ref.doi), [])) == 1:
        return doi_index[_norm_doi(ref.doi)][0]
    stem_matches = [
        p for p in files if p.stem.lower() in {ref.key.lower(), _safe_id(ref.key).lower()}
    ]
    return stem_matches[0] if len(stem_matches) == 1 else None


def plan_from_export(corpus_dir: Path, export: Path) -> SourcePlan:
    """Sources from a Zotero / Mendeley / EndNote export (BibTeX or CSL JSON).

    Each entry is matched to a file under ``corpus_dir`` by the export's ``file``
    field (the path, or just its file name), then by DOI (in the file name, the PDF's
    metadata or its first page), then by a file named after the citation key. An
    entry with no file found, and a file with no entry, are reported by name.
    """
    if not export.is_file():
        raise MyoQAError(f"Source manifest {export} not found.")
    refs = read_bibliography(export)
    files = _corpus_files(corpus_dir, export)
    doi_index: dict[str, list[Path]] = {}
    if any(ref.doi for ref in refs):
        for path in files:
            for doi in _dois_in_file(path):
                doi_index.setdefault(doi, []).append(path)
    sources: list[tuple[SourceRecord, Path]] = []
    problems: list[Problem] = []
    used: dict[Path, str] = {}
    seen_ids: set[str] = set()
    for ref in refs:
        found = match_export_file(ref, files, corpus_dir, doi_index)
        if found is None:
            tried = [f"file field {', '.join(ref.files)}" if ref.files else "no file field"]
            tried.append(f"DOI {ref.doi}" if ref.doi else "no DOI")
            tried.append(f"a file named {ref.key}.pdf")
            problems.append(
                Problem(
                    ref.key,
                    f"{export.name} lists this entry but no file under {corpus_dir} matches it "
                    f"({'; '.join(tried)}); copy its PDF into the corpus folder",
                )
            )
            continue
        path = found
        if path in used:
            problems.append(Problem(ref.key, f"matches {path.name}, already used by {used[path]}"))
            continue
        record_id = _safe_id(ref.key)
        if record_id in seen_ids:
            problems.append(Problem(ref.key, f"duplicate id {record_id!r}"))
            continue
        seen_ids.add(record_id)
        used[path] = ref.key
        record = SourceRecord(
            id=record_id,
            file=path.relative_to(corpus_dir).as_posix(),
            title=ref.title or path.stem,
            authors=ref.authors,
            journal=ref.journal_line(),
            year=ref.year,
            doi=ref.doi,
            pmid=ref.pmid,
            pmcid=ref.pmcid,
            url=ref.url,
        )
        sources.append((record, path))
    for path in files:
        if path not in used:
            problems.append(
                Problem(
                    path.relative_to(corpus_dir).as_posix(),
                    f"no entry in {export.name} matches this file; add it to the export "
                    "(with the PDF attached) to index it",
                )
            )
    return SourcePlan(sources=sources, problems=problems)
