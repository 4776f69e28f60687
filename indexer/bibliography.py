"""Bibliographic records and pandoc citation markers.

A bibliography is a CSL JSON file (a list of items, as Zotero, Mendeley and pandoc
write it) or a BibTeX file (parsed with bibtexparser). Each item becomes a
:class:`Reference`. In the bundled digests a sentence names its source with a
pandoc citation, ``[@RIM13]`` or ``[@BEST19; @OLDROYD21]``; :func:`strip_markers`
removes the markers from the quotable text and says where each one stood.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from indexer.errors import MyoQAError

#: A pandoc citation group: ``[@KEY]``, ``[@A; @B]``, ``[see @A, p. 4]``.
CITATION_GROUP = re.compile(r"[ \t]*\[(?=[^\[\]]*@)[^\[\]]*\]")
_KEY = re.compile(r"@([A-Za-z0-9_][\w:.#$%&+?<>~/-]*)")


class Reference(BaseModel):
    """One bibliography entry, in the fields a citation shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    title: str = ""
    authors: str = ""
    journal: str = ""
    year: str = ""
    volume: str = ""
    issue: str = ""
    pages: str = ""
    doi: str = ""
    pmid: str = ""
    pmcid: str = ""
    url: str = ""
    #: Files the reference manager attached (BibTeX ``file`` field, CSL ``file``).
    files: list[str] = Field(default_factory=list)

    def journal_line(self) -> str:
        """``Arthritis Rheum 2013;65(2):314-324`` from the parts that are known."""
        line = " ".join(p for p in (self.journal, self.year) if p)
        if self.volume:
            line += f";{self.volume}" + (f"({self.issue})" if self.issue else "")
        if self.pages:
            line += f":{self.pages}"
        return line


def citation_keys(marker: str) -> tuple[str, ...]:
    """The keys of one citation group, in order: ``[@A; @B]`` -> ``("A", "B")``."""
    return tuple(dict.fromkeys(k.rstrip(".,;:") for k in _KEY.findall(marker)))


def strip_markers(text: str) -> tuple[str, list[tuple[int, tuple[str, ...]]]]:
    """Remove citation groups; return the clean text and ``(offset, keys)`` per group.

    ``offset`` is where the group stood in the clean text, so the group belongs to the
    sentence whose span contains it (``... weeks [@RIM13].`` sits before the period).
    """
    out: list[str] = []
    found: list[tuple[int, tuple[str, ...]]] = []
    cursor = 0
    length = 0
    for match in CITATION_GROUP.finditer(text):
        piece = text[cursor : match.start()]
        out.append(piece)
        length += len(piece)
        keys = citation_keys(match.group(0))
        if keys:
            found.append((length, keys))
        cursor = match.end()
    out.append(text[cursor:])
    clean = "".join(out)
    lead = len(clean) - len(clean.lstrip())
    return clean.strip(), [(max(0, offset - lead), keys) for offset, keys in found]


# --- reading bibliography files ----------------------------------------------------


def _csl_names(names: Any) -> str:
    if not isinstance(names, list):
        return ""
    parts = []
    for name in names:
        if not isinstance(name, dict):
            continue
        if name.get("literal"):
            parts.append(str(name["literal"]))
        else:
            family = str(name.get("family", "")).strip()
            given = str(name.get("given", "")).strip()
            initials = given if given.replace(" ", "").isupper() else _initials(given)
            parts.append(" ".join(p for p in (family, initials) if p))
    return ", ".join(p for p in parts if p)


def _initials(given: str) -> str:
    return "".join(w[0].upper() for w in re.split(r"[\s.-]+", given) if w)


def _csl_year(item: dict[str, Any]) -> str:
    issued = item.get("issued")
    if isinstance(issued, dict):
        parts = issued.get("date-parts")
        if isinstance(parts, list) and parts and isinstance(parts[0], list) and parts[0]:
            return str(parts[0][0])
        if issued.get("raw"):
            found = re.search(r"\d{4}", str(issued["raw"]))
            return found.group(0) if found else ""
    return ""


def reference_from_csl(item: dict[str, Any]) -> Reference:
    """One CSL JSON item as a :class:`Reference`."""
    key = str(item.get("id") or item.get("citation-key") or "").strip()
    if not key:
        raise ValueError("a CSL item without an id")
    files = item.get("file") or []
    doi = str(item.get("DOI", "")).strip()
    return Reference(
        key=key,
        title=str(item.get("title", "")).strip(),
        authors=_csl_names(item.get("author")),
        journal=str(item.get("container-title-short") or item.get("container-title") or "").strip(),
        year=_csl_year(item),
        volume=str(item.get("volume", "")).strip(),
        issue=str(item.get("issue", "")).strip(),
        pages=str(item.get("page", "")).strip(),
        doi=doi,
        pmid=str(item.get("PMID", "")).strip(),
        pmcid=str(item.get("PMCID", "")).strip(),
        url=str(item.get("URL", "")).strip() or (f"https://doi.org/{doi}" if doi else ""),
        files=[str(f) for f in files] if isinstance(files, list) else [str(files)],
    )


def _bibtex_files(value: str) -> list[str]:
    """Paths in a BibTeX ``file`` field.

    Zotero writes ``path/a.pdf;path/b.pdf``; Mendeley and JabRef write
    ``:path/a.pdf:pdf`` or ``Description:path/a.pdf:application/pdf``.
    """
    files = []
    for part in re.split(r";(?![^:]*:(?:pdf|application/pdf|PDF)\b)", value):
        part = part.strip()
        if not part:
            continue
        fields = re.split(r"(?<!\\):(?![\\/])", part)
        if len(fields) >= 3:
            candidate = next((f for f in fields[1:-1] if f.strip()), fields[1])
        else:
            candidate = part
        files.append(candidate.replace("\\:", ":").strip())
    return [f for f in files if f]


def _bibtex_authors(value: str) -> str:
    from bibtexparser.middlewares.names import (
        parse_single_name_into_parts,
        split_multiple_persons_names,
    )

    names = []
    for person in split_multiple_persons_names(value):
        parts = parse_single_name_into_parts(person, strict=False)
        family = " ".join(parts.von + parts.last)
        initials = "".join(_initials(g) for g in parts.first)
        names.append(" ".join(p for p in (family, initials) if p) or person)
    return ", ".join(names)


def reference_from_bibtex(key: str, fields: dict[str, str]) -> Reference:
    """One BibTeX entry (already LaTeX-decoded) as a :class:`Reference`."""
    f = {k.lower(): re.sub(r"[{}]", "", v).strip() for k, v in fields.items()}
    doi = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)", "", f.get("doi", ""), flags=re.I)
    pmid = f.get("pmid", "")
    pmcid = f.get("pmcid", "")
    if not pmid:  # Zotero puts "PMID: 123" in the extra field
        found = re.search(r"PMID:\s*(\d+)", f.get("extra", "") + " " + f.get("note", ""))
        pmid = found.group(1) if found else ""
    if not pmcid:
        found = re.search(r"PMCID:\s*(PMC\d+)", f.get("extra", "") + " " + f.get("note", ""))
        pmcid = found.group(1) if found else ""
    year = f.get("year", "") or (re.search(r"\d{4}", f.get("date", "")) or [""])[0]
    return Reference(
        key=key,
        title=f.get("title", ""),
        authors=_bibtex_authors(fields.get("author", "")) if fields.get("author") else "",
        journal=f.get("journal", "") or f.get("journaltitle", "") or f.get("booktitle", ""),
        year=str(year),
        volume=f.get("volume", ""),
        issue=f.get("number", "") or f.get("issue", ""),
        pages=f.get("pages", "").replace("--", "-").replace("\u2013", "-"),
        doi=doi,
        pmid=pmid,
        pmcid=pmcid,
        url=f.get("url", "") or (f"https://doi.org/{doi}" if doi else ""),
        files=_bibtex_files(fields.get("file", "")) if fields.get("file") else [],
    )


def read_bibliography(path: Path) -> list[Reference]:
    """Read a CSL JSON (``.json``) or BibTeX (``.bib``) file.

    Raises:
        MyoQAError: the file cannot be read or parsed, or holds no entries.
    """
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MyoQAError(f"cannot read the bibliography {path}: {exc}") from exc
    if suffix == ".json":
        refs = _read_csl(text, path)
    elif suffix == ".bib":
        refs = _read_bibtex(text, path)
    else:
        raise MyoQAError(
            f"{path}: a bibliography must be CSL JSON (.json) or BibTeX (.bib), not {suffix!r}"
        )
    if not refs:
        raise MyoQAError(f"{path} holds no bibliography entries")
    return refs


def _read_csl(text: str, path: Path) -> list[Reference]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MyoQAError(f"{path} is not valid CSL JSON (line {exc.lineno}: {exc.msg})") from exc
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list):
        raise MyoQAError(f"{path}: CSL JSON must be a list of items")
    refs = []
    for position, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise MyoQAError(f"{path}: item {position} is not an object")
        try:
            refs.append(reference_from_csl(item))
        except ValueError as exc:
            raise MyoQAError(f"{path}: item {position}: {exc}") from exc
    return refs


def _read_bibtex(text: str, path: Path) -> list[Reference]:
    import bibtexparser
    from bibtexparser.middlewares import LatexDecodingMiddleware

    raw = bibtexparser.parse_string(text)
    if raw.failed_blocks:
        line = raw.failed_blocks[0].start_line
        where = f" starting at line {line + 1}" if line is not None else ""
        raise MyoQAError(f"{path}: cannot parse the BibTeX entry{where}")
    # LaTeX accents are decoded ({\"u} -> ü); the file field is kept raw, where
    # "\:" escapes the colon of a Windows drive.
    decoded = bibtexparser.parse_string(text, append_middleware=[LatexDecodingMiddleware()])
    refs = []
    for entry, plain in zip(raw.entries, decoded.entries, strict=True):
        fields = {f.key: str(f.value) for f in plain.fields}
        if "file" in entry.fields_dict:
            fields["file"] = str(entry.fields_dict["file"].value)
        refs.append(reference_from_bibtex(entry.key, fields))
    return refs


def index_references(refs: Iterable[Reference]) -> dict[str, Reference]:
    """Key -> reference; a key given twice is an error (a citation must be unambiguous)."""
    out: dict[str, Reference] = {}
    for ref in refs:
        if ref.key in out:
            raise MyoQAError(f"bibliography key {ref.key!r} is defined twice")
        out[ref.key] = ref
    return out
