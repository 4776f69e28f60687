"""Section-aware chunking, as pure functions.

Chunks never split a sentence, never cross a section boundary, repeat whole
trailing sentences as overlap, and fit the embedding model's maximum sequence
length as measured by the caller's token counter (the model's own tokenizer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby

from pydantic import BaseModel, ConfigDict

from indexer.loaders import Block
from indexer.text import sentence_spans

TokenCounter = Callable[[str], int]
SECTION_SEPARATOR = " > "


class Chunk(BaseModel):
    """A retrievable passage and exactly where it came from."""

    model_config = ConfigDict(frozen=True)

    chunk_id: str
    source_id: str
    text: str
    section: str
    page_start: int | None
    page_end: int | None
    char_start: int
    char_end: int
    n_tokens: int
    #: ``(start, end)`` of each sentence within ``text``; each sentence is embedded too.
    sentences: list[tuple[int, int]]
    #: Bibliography keys of each sentence (parallel to ``sentences``; empty lists for
    #: a source whose sentences carry no citation markers, such as a PDF).
    sentence_sources: list[list[str]] = []
    #: Page of each sentence (parallel to ``sentences``), for sources with pages.
    sentence_pages: list[int | None] = []

    def quoted(self, sentence_text: str) -> list[int]:
        """Indexes of this chunk's sentences that ``sentence_text`` quotes (or lies within)."""
        return [
            i
            for i, (a, b) in enumerate(self.sentences)
            if self.text[a:b] in sentence_text or sentence_text in self.text[a:b]
        ]

    def pages_of(self, sentence_text: str) -> tuple[int | None, int | None]:
        """First and last page of the sentences ``sentence_text`` quotes; the chunk's otherwise."""
        pages = [
            p
            for i in self.quoted(sentence_text)
            if i < len(self.sentence_pages) and (p := self.sentence_pages[i]) is not None
        ]
        return (min(pages), max(pages)) if pages else (self.page_start, self.page_end)

    def sources_of(self, sentence_text: str) -> list[str]:
        """Keys of the sentences of this chunk that ``sentence_text`` quotes, first-seen order."""
        keys: list[str] = []
        for i in self.quoted(sentence_text):
            if i < len(self.sentence_sources):
                keys.extend(k for k in self.sentence_sources[i] if k not in keys)
        return keys

    def sentence_texts(self) -> list[str]:
        return [self.text[a:b] for a, b in self.sentences]

    def embedding_text(self) -> str:
        """What is embedded: the section heading gives the passage its context."""
        return embedding_text(self.section, self.text)


def embedding_text(section: str, text: str) -> str:
    return f"{section}: {text}" if section else text


def chunk_id_for(source_id: str, text: str) -> str:
    """Stable across rebuilds: depends only on the source id and the chunk text."""
    return hashlib.sha256(f"{source_id}\n{text}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class _Sentence:
    text: str
    page: int | None
    start: int
    end: int
    tokens: int
    sources: tuple[str, ...] = ()


def _sentence_sources(block: Block, a: int, b: int) -> tuple[str, ...]:
    keys: list[str] = []
    for offset, found in block.citations:
        if a <= offset <= b:
            keys.extend(k for k in found if k not in keys)
    return tuple(keys)


def document_sentences(
    blocks: Sequence[Block], count_tokens: TokenCounter
) -> list[tuple[tuple[str, ...], list[_Sentence]]]:
    """Sentences grouped by consecutive section, with offsets into the joined document text."""
    offset = 0
    located: list[tuple[tuple[str, ...], _Sentence]] = []
    for block in blocks:
        for a, b in sentence_spans(block.text):
            text = block.text[a:b]
            located.append(
                (
                    block.section,
                    _Sentence(
                        text,
                        block.page,
                        offset + a,
                        offset + b,
                        count_tokens(text),
                        _sentence_sources(block, a, b),
                    ),
                )
            )
        offset += len(block.text) + 2  # blocks are joined by a blank line
    return [
        (section, [s for _, s in group]) for section, group in groupby(located, key=lambda x: x[0])
    ]


def _split_long(sentence: _Sentence, budget: int, count_tokens: TokenCounter) -> list[_Sentence]:
    """Cut a sentence longer than the budget at word boundaries (rare: tables, lists)."""
    words = sentence.text.split(" ")
    pieces: list[_Sentence] = []
    current: list[str] = []
    position = sentence.start
    for word in words:
        candidate = " ".join([*current, word])
        if current and count_tokens(candidate) > budget:
            text = " ".join(current)
            pieces.append(
                _Sentence(
                    text,
                    sentence.page,
                    position,
                    position + len(text),
                    count_tokens(text),
                    sentence.sources,
                )
            )
            position += len(text) + 1
            current = [word]
        else:
            current.append(word)
    if current:
        text = " ".join(current)
        if count_tokens(text) > budget:
            raise ValueError(f"a single word exceeds the chunk budget of {budget} tokens")
        pieces.append(
            _Sentence(
                text,
                sentence.page,
                position,
                position + len(text),
                count_tokens(text),
                sentence.sources,
            )
        )
    return pieces


def chunk_blocks(
    source_id: str,
    blocks: Sequence[Block],
    count_tokens: TokenCounter,
    max_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """Chunk a document's blocks.

    Args:
        source_id: the manifest id of the document.
        blocks: the document's paragraphs in reading order.
        count_tokens: word pieces of a text, without special tokens.
        max_tokens: budget for ``embedding_text(section, text)`` of each chunk.
        overlap_tokens: budget for whole sentences repeated from the previous chunk.
    """
    if overlap_tokens >= max_tokens:
        raise ValueError("overlap_tokens must be smaller than max_tokens")
    chunks: list[Chunk] = []
    seen_ids: set[str] = set()
    for section_path, sentences in document_sentences(blocks, count_tokens):
        section = SECTION_SEPARATOR.join(section_path)
        # ": " and the joins between sentences cost at most a couple of pieces
        budget = max_tokens - (count_tokens(section) + 2 if section else 0)
        if budget < 16:
            raise ValueError(f"section heading {section!r} leaves no room in {max_tokens} tokens")
        units: list[_Sentence] = []
        for sentence in sentences:
            units.extend(
                _split_long(sentence, budget, count_tokens)
                if sentence.tokens > budget
                else [sentence]
            )
        for group in _pack(units, budget, overlap_tokens):
            text = " ".join(s.text for s in group)
            spans: list[tuple[int, int]] = []
            cursor = 0
            for s in group:
                spans.append((cursor, cursor + len(s.text)))
                cursor += len(s.text) + 1
            chunk_id = chunk_id_for(source_id, text)
            if chunk_id in seen_ids:
                continue
            seen_ids.add(chunk_id)
            pages = [s.page for s in group if s.page is not None]
            chunks.append(
                Chunk(
                    chunk_id=chunk_id,
                    source_id=source_id,
                    text=text,
                    section=section,
                    page_start=min(pages) if pages else None,
                    page_end=max(pages) if pages else None,
                    char_start=group[0].start,
                    char_end=group[-1].end,
                    n_tokens=count_tokens(embedding_text(section, text)),
                    sentences=spans,
                    sentence_sources=[list(s.sources) for s in group],
                    sentence_pages=[s.page for s in group],
                )
            )
    return chunks


def _pack(units: list[_Sentence], budget: int, overlap_tokens: int) -> list[list[_Sentence]]:
    """Greedy packing of sentences into groups within ``budget``, with sentence overlap."""
    groups: list[list[_Sentence]] = []
    current: list[_Sentence] = []
    used = 0
    fresh = False  # does the current group hold a sentence not already emitted?
    for unit in units:
        if current and used + unit.tokens + 1 > budget:
            groups.append(current)
            carry: list[_Sentence] = []
            carried = 0
            for previous in reversed(current):
                if carried + previous.tokens > overlap_tokens:
                    break
                carry.insert(0, previous)
                carried += previous.tokens + 1
            while carry and carried + unit.tokens + 1 > budget:
                carried -= carry.pop(0).tokens + 1
            current, used, fresh = carry, carried, False
        current.append(unit)
        used += unit.tokens + 1
        fresh = True
    if current and fresh:
        groups.append(current)
    return groups
