"""Loaders turn a source file into blocks of text that know their section and page.

A loader raises :class:`MyoQAError` for a file it cannot read (corrupt, empty,
encrypted, image-only); the build reports it by name and indexes the rest.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from indexer.bibliography import strip_markers
from indexer.errors import MyoQAError
from indexer.text import normalize_space

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """A paragraph of a document with where it sits."""

    text: str
    section: tuple[str, ...]
    page: int | None = None
    #: ``(offset in text, keys)`` of each citation marker removed from the text; the
    #: keys are the sources of the sentence whose span holds the offset.
    citations: tuple[tuple[int, tuple[str, ...]], ...] = ()


@dataclass
class LoadedDocument:
    title: str | None
    blocks: list[Block]
    pages: int = 0
    warnings: list[str] = field(default_factory=list)


def load_document(path: Path) -> LoadedDocument:
    """Load a Markdown, text or PDF file."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise MyoQAError("empty file")
    if suffix == ".pdf":
        return load_pdf(path)
    if suffix in {".xml", ".nxml"}:
        return load_jats(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MyoQAError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    document = parse_markdown(text) if suffix in {".md", ".markdown"} else parse_plain_text(text)
    if not document.blocks:
        raise MyoQAError("no text to index")
    return document


# --- Markdown and plain text ---------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BYLINE = re.compile(r"^\*[^*].*\*$")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+")


def parse_markdown(text: str) -> LoadedDocument:
    """Blocks from Markdown; sections are the heading path below the ``#`` title.

    A paragraph set entirely in italics right under the title is a byline and is
    not indexed. List items become blocks of their own. Pandoc citations
    (``[@RIM13]``, ``[@A; @B]``) are removed from the text and kept as the sources
    of the sentence they stand in.
    """
    title: str | None = None
    path: list[str] = []
    blocks: list[Block] = []
    paragraph: list[str] = []
    seen_body = False

    def flush() -> None:
        nonlocal seen_body
        if not paragraph:
            return
        raw = " ".join(paragraph)
        paragraph.clear()
        if not seen_body and not path and _BYLINE.match(raw.strip()):
            return
        seen_body = True
        clean, citations = strip_markers(normalize_space(_EMPHASIS.sub("", _LINK.sub(r"\1", raw))))
        if clean:
            blocks.append(
                Block(clean, tuple(path) or ((title,) if title else ()), citations=tuple(citations))
            )

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            flush()
            level, name = len(heading.group(1)), _EMPHASIS.sub("", heading.group(2)).strip()
            if level == 1 and title is None:
                title = name
                continue
            depth = max(level - 2, 0)
            path = [*path[:depth], name]
        elif not line.strip():
            flush()
        elif _LIST_MARK.match(line):
            flush()
            paragraph.append(_LIST_MARK.sub("", line))
        else:
            paragraph.append(line.strip())
    flush()
    return LoadedDocument(title=title, blocks=blocks)


def parse_plain_text(text: str) -> LoadedDocument:
    """Blocks from plain text: paragraphs separated by blank lines, no sections."""
    blocks = [
        Block(normalize_space(p), ()) for p in re.split(r"\n\s*\n", text) if normalize_space(p)
    ]
    return LoadedDocument(title=None, blocks=blocks)


# --- PDF -------------------------------------------------------------------------

_PAGE_NUMBER = re.compile(r"^(?:page\s*)?\d{1,4}(?:\s*(?:/|of)\s*\d{1,4})?$", re.IGNORECASE)
_NUMBERED_HEADING = re.compile(r"^\d{1,2}(?:\.\d{1,2})*\.?\s+[A-Z][^.!?]{2,70}$")
_KNOWN_HEADINGS = frozenset(
    {
        "abstract", "introduction", "background", "methods", "results", "discussion",
        "conclusion", "conclusions", "summary", "key points", "classification", "diagnosis",
        "treatment", "management", "pathology", "epidemiology", "outcomes", "references",
        "acknowledgements", "acknowledgments", "funding", "bibliography",
    }
)  # fmt: skip
_BACK_MATTER = frozenset({"references", "bibliography", "acknowledgements", "acknowledgments"})
_HYPHEN_BREAK = re.compile(r"(\w)-\n\s*([a-z])")
_HYPHEN_KEEP = re.compile(r"(\w)-\n\s*([A-Z0-9])")


def _normalise_line(line: str) -> str:
    """A line with digits masked, to recognise running headers like 'Page 3 of 9'."""
    return re.sub(r"\d+", "#", normalize_space(line)).lower()


def strip_running_lines(pages: list[list[str]], min_share: float = 0.5) -> list[list[str]]:
    """Drop page numbers and header/footer lines repeated across pages.

    A line counts as running when its digit-masked form sits among the first or
    last two lines of at least ``min_share`` of the pages (and of at least 2).
    """
    if len(pages) < 2:
        return [[ln for ln in page if not _PAGE_NUMBER.match(ln.strip())] for page in pages]
    edges: Counter[str] = Counter()
    for page in pages:
        edge_lines = {_normalise_line(ln) for ln in page[:2] + page[-2:] if ln.strip()}
        edges.update(edge_lines)
    threshold = max(2, int(len(pages) * min_share + 0.999))
    running = {line for line, count in edges.items() if count >= threshold}
    cleaned = []
    for page in pages:
        kept = []
        for index, line in enumerate(page):
            at_edge = index < 2 or index >= len(page) - 2
            stripped = line.strip()
            if _PAGE_NUMBER.match(stripped) or (at_edge and _normalise_line(line) in running):
                continue
            kept.append(line)
        cleaned.append(kept)
    return cleaned


def _is_heading(line: str) -> bool:
    stripped = line.strip().rstrip(":")
    if not stripped or len(stripped) > 80:
        return False
    return stripped.lower() in _KNOWN_HEADINGS or bool(_NUMBERED_HEADING.match(stripped))


def pdf_pages_to_blocks(pages: list[str]) -> list[Block]:
    """Turn the extracted text of each page into blocks with page numbers and sections.

    Words hyphenated across a line break are joined, lines of a paragraph are
    joined, headings start a new section, and the back matter (references) is dropped.
    """
    line_pages = strip_running_lines([p.splitlines() for p in pages])
    blocks: list[Block] = []
    section: tuple[str, ...] = ()
    paragraph: list[str] = []

    def flush(page: int) -> None:
        if paragraph:
            joined = normalize_space(" ".join(paragraph))
            if joined:
                blocks.append(Block(joined, section, page))
            paragraph.clear()

    for page_no, lines in enumerate(line_pages, start=1):
        text = _HYPHEN_BREAK.sub(r"\1\2", "\n".join(lines))
        text = _HYPHEN_KEEP.sub(r"\1-\2", text)  # anti-\nJo-1 stays anti-Jo-1
        for line in text.splitlines():
            if _is_heading(line):
                flush(page_no)
                name = line.strip().rstrip(":")
                if name.lower() in _BACK_MATTER:
                    return blocks
                section = (re.sub(r"^\d+(?:\.\d+)*\.?\s+", "", name),)
            elif not line.strip():
                flush(page_no)
            else:
                paragraph.append(line.strip())
        flush(page_no)
    return blocks


def load_pdf(path: Path) -> LoadedDocument:
    """Load a PDF with pypdf, one block per paragraph, each knowing its page."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except Exception as exc:  # pypdf raises several types for unsupported crypto
                raise MyoQAError(f"encrypted PDF ({exc})") from exc
            if not unlocked:
                raise MyoQAError("encrypted PDF; save an unencrypted copy to index it")
        texts = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or None
    except MyoQAError:
        raise
    except (PdfReadError, DependencyError, ValueError, KeyError, TypeError, OSError) as exc:
        raise MyoQAError(f"unreadable PDF ({type(exc).__name__}: {exc})") from exc
    warnings = [
        f"page {n} has no extractable text (scanned image?)"
        for n, text in enumerate(texts, start=1)
        if not text.strip()
    ]
    if not texts:
        raise MyoQAError("PDF has no pages")
    if len(warnings) == len(texts):
        raise MyoQAError("no extractable text on any page (scanned PDF? run OCR first)")
    blocks = pdf_pages_to_blocks(texts)
    if not blocks:
        raise MyoQAError("no text to index after removing headers, footers and references")
    return LoadedDocument(title=title, blocks=blocks, pages=len(texts), warnings=warnings)


# --- PMC JATS XML ------------------------------------------------------------------

_SKIPPED_JATS = frozenset({"ref-list", "fig", "table-wrap", "supplementary-material", "ack"})


def load_jats(path: Path) -> LoadedDocument:
    """Load a PMC JATS XML article: abstract and body, sections from nested ``<sec>`` titles.

    Parsed with defusedxml, so entity tricks in a shared file cannot expand or fetch anything.
    """
    from xml.etree.ElementTree import Element

    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise MyoQAError(f"unreadable XML ({exc})") from exc
    if root.tag != "article":
        raise MyoQAError(f"not a JATS article (root element <{root.tag}>)")
    title_node = root.find("./front/article-meta/title-group/article-title")
    title = normalize_space("".join(title_node.itertext())) if title_node is not None else None
    blocks: list[Block] = []

    def walk(node: Element, section: tuple[str, ...]) -> None:
        for child in node:
            if child.tag in _SKIPPED_JATS:
                continue
            if child.tag == "sec":
                heading = child.find("title")
                name = normalize_space("".join(heading.itertext())) if heading is not None else ""
                walk(child, (*section, name) if name else section)
            elif child.tag == "p":
                text = normalize_space("".join(child.itertext()))
                if text:
                    blocks.append(Block(text, section))

    abstract = root.find("./front/article-meta/abstract")
    if abstract is not None:
        walk(abstract, ("Abstract",))
    body = root.find("body")
    if body is not None:
        walk(body, ())
    if not blocks:
        raise MyoQAError("no abstract or body text in the XML")
    return LoadedDocument(title=title, blocks=blocks)
